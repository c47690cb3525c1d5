//! The connection flags `load` and the probes share: how to trust TLS and where to connect.

use std::net::SocketAddr;

use anyhow::Context;
use cdcheck::traffic::parse_resolve;
use cdcheck::traffic::tls::TlsOptions;

#[derive(clap::Args, Debug, Default)]
pub struct ConnectionArgs {
    /// Accept any server certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Trust only the certificates in this PEM file.
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<String>,
    /// Connect to ADDRESS:PORT for HOST (TLS server name and Host stay HOST), like curl's;
    /// repeatable.
    #[arg(long = "resolve", value_name = "HOST:PORT:ADDRESS")]
    pub resolve: Vec<String>,
}

impl ConnectionArgs {
    pub fn tls(&self) -> anyhow::Result<TlsOptions> {
        let ca_pem = match &self.cacert {
            Some(path) => Some(
                std::fs::read(path).with_context(|| format!("read certificate file `{path}`"))?,
            ),
            None => None,
        };
        Ok(TlsOptions {
            insecure: self.insecure,
            ca_pem,
        })
    }

    pub fn resolve(&self) -> anyhow::Result<Vec<(String, SocketAddr)>> {
        Ok(self
            .resolve
            .iter()
            .map(|entry| parse_resolve(entry))
            .collect::<Result<_, _>>()?)
    }
}
