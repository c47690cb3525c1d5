//! Certificates and keys of the local control plane, generated at every boot:
//! one CA, the API server's serving certificate, client certificates for the
//! admin and each component, and the service-account signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generate the {what} certificate")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// Everything the control plane's TLS and token signing need.
pub struct Pki {
    pub ca: Pem,
    pub apiserver: Pem,
    pub admin: Pem,
    pub controller_manager: Pem,
    pub scheduler: Pem,
    /// The API server's client certificate towards kubelets (the local mesh's log endpoint
    /// requires one issued by the CA).
    pub kubelet_client: Pem,
    /// PKCS#8 PEM of the service-account token signing key.
    pub service_account_key: String,
    /// Its public half (PEM), which the API server verifies tokens with.
    pub service_account_pub: String,
}

/// Paths of the PKI files written into the state directory.
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

fn gen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

fn leaf(
    what: &'static str,
    issuer: &Issuer<'_, KeyPair>,
    sans: Vec<String>,
    common_name: &str,
    organization: Option<&str>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<Pem, PkiError> {
    let key = KeyPair::generate().map_err(gen_err(what))?;
    let mut params = CertificateParams::new(sans).map_err(gen_err(what))?;
    params.distinguished_name = name(common_name, organization);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer).map_err(gen_err(what))?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

impl Pki {
    /// Generates a fresh CA and every certificate signed by it.
    pub fn generate() -> Result<Pki, PkiError> {
        let ca_key = KeyPair::generate().map_err(gen_err("CA"))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("CA"))?;
        ca_params.distinguished_name = name("cdcheck-local-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err("CA"))?;
        let ca = Pem {
            cert: ca_cert.pem(),
            key: ca_key.serialize_pem(),
        };
        let issuer = Issuer::new(ca_params, ca_key);

        let apiserver_sans = [
            "localhost",
            "127.0.0.1",
            "10.96.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .map(String::from)
        .to_vec();
        let apiserver = leaf(
            "API server",
            &issuer,
            apiserver_sans,
            "kube-apiserver",
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = |what, cn: &str, org: Option<&str>| {
            leaf(
                what,
                &issuer,
                Vec::new(),
                cn,
                org,
                ExtendedKeyUsagePurpose::ClientAuth,
            )
        };
        let admin = client("admin", "cdcheck-admin", Some("system:masters"))?;
        let controller_manager =
            client("controller-manager", "system:kube-controller-manager", None)?;
        let scheduler = client("scheduler", "system:kube-scheduler", None)?;
        let kubelet_client = client(
            "kubelet client",
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
        )?;
        let sa = KeyPair::generate().map_err(gen_err("service-account"))?;
        Ok(Pki {
            ca,
            apiserver,
            admin,
            controller_manager,
            scheduler,
            kubelet_client,
            service_account_key: sa.serialize_pem(),
            service_account_pub: sa.public_key_pem(),
        })
    }

    /// Writes the files the components read (keys with mode 0600) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<PkiFiles, PkiError> {
        let files = PkiFiles {
            ca_cert: dir.join("ca.crt"),
            apiserver_cert: dir.join("apiserver.crt"),
            apiserver_key: dir.join("apiserver.key"),
            kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
            kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
            service_account_key: dir.join("sa.key"),
            service_account_pub: dir.join("sa.pub"),
        };
        write_file(&files.ca_cert, &self.ca.cert)?;
        write_file(&files.apiserver_cert, &self.apiserver.cert)?;
        write_file(&files.apiserver_key, &self.apiserver.key)?;
        write_file(&files.kubelet_client_cert, &self.kubelet_client.cert)?;
        write_file(&files.kubelet_client_key, &self.kubelet_client.key)?;
        write_file(&files.service_account_key, &self.service_account_key)?;
        write_file(&files.service_account_pub, &self.service_account_pub)?;
        Ok(files)
    }
}

/// Writes `contents` to `path` with mode 0600 (state files hold keys).
pub(crate) fn write_file(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(contents.as_bytes())
    };
    write().map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_certificate_is_issued_by_the_ca_for_system_masters() {
        let pki = Pki::generate().unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(pki.ca.cert.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        let (_, admin) = x509_parser::pem::parse_x509_pem(pki.admin.cert.as_bytes()).unwrap();
        let admin = admin.parse_x509().unwrap();
        assert_eq!(admin.issuer(), ca.subject());
        let org: Vec<_> = admin
            .subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .collect();
        assert_eq!(org, vec!["system:masters"]);
    }

    #[test]
    fn the_serving_certificate_names_localhost_and_the_kubernetes_service() {
        let pki = Pki::generate().unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pki.apiserver.cert.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert!(
            names.iter().any(|n| n == "IPAddress(7f:00:00:01)"),
            "{names:?}"
        );
        assert!(
            names.iter().any(|n| n.contains("kubernetes.default.svc")),
            "{names:?}"
        );
    }
}
