//! Online Boutique's own services, built from upstream's sources at the pinned tag into the
//! binary cache, for the local mesh to run as its pods' processes (`scripts/install-boutique.sh`).
//!
//! Nine of upstream's services build here (Go, Node, Python, and Java through a Maven build of
//! adservice's sources). cartservice (.NET: NuGet is out of reach) and loadgenerator (locust,
//! which serves nothing) stay stand-ins, and redis-cart is Redis.

use std::path::{Path, PathBuf};

use super::binaries::{self, BinaryError};
use crate::versions;

/// The script, embedded so an installed `cdcheck` needs no checkout.
const INSTALL_SCRIPT: &str = include_str!("../../scripts/install-boutique.sh");

/// The services built from upstream's sources, as their Deployments are named.
pub const BUILT: [&str; 9] = [
    "frontend",
    "checkoutservice",
    "productcatalogservice",
    "shippingservice",
    "currencyservice",
    "paymentservice",
    "emailservice",
    "recommendationservice",
    "adservice",
];

/// `<cache>/boutique-<version>`: one directory per service, each with its `run` launcher.
pub fn cache_dir() -> PathBuf {
    binaries::cache_root().join(format!("boutique-{}", versions::ONLINE_BOUTIQUE))
}

/// The launcher of a built service (`<cache_dir>/<service>/run`), which starts it with the
/// environment it is given (PORT, `*_SERVICE_ADDR`, ...).
pub fn launcher(dir: &Path, service: &str) -> PathBuf {
    dir.join(service).join("run")
}

/// The cached build, when every service of [`BUILT`] is complete in it.
pub fn locate() -> Result<PathBuf, BinaryError> {
    let dir = cache_dir();
    let complete = dir.join(".complete").is_file()
        && BUILT
            .iter()
            .all(|service| dir.join(service).join(".built").is_file());
    if complete {
        Ok(dir)
    } else {
        Err(BinaryError::Missing {
            names: format!("Online Boutique {} services", versions::ONLINE_BOUTIQUE),
            vars: crate::settings::env::BOUTIQUE_SRC.to_string(),
            cache: dir.display().to_string(),
        })
    }
}

/// The cached build, else built by the script (about 3–4 min cold on 2 cores: Go, npm, pip
/// and Maven downloads; instant when cached). The sources come from
/// `$CDCHECK_BOUTIQUE_SRC`, else the pinned tag is fetched and its commit checked.
pub fn ensure(mut progress: impl FnMut(&str)) -> Result<PathBuf, BinaryError> {
    if let Ok(dir) = locate() {
        return Ok(dir);
    }
    let mut env = vec![
        (
            "CDCHECK_BOUTIQUE_VERSION",
            versions::ONLINE_BOUTIQUE.to_string(),
        ),
        (
            "CDCHECK_BOUTIQUE_COMMIT",
            versions::ONLINE_BOUTIQUE_COMMIT.to_string(),
        ),
        (
            "CDCHECK_BOUTIQUE_GIT",
            versions::ONLINE_BOUTIQUE_GIT.to_string(),
        ),
        (
            "CDCHECK_ADSERVICE_GRPC_VERSION",
            versions::ADSERVICE_GRPC.to_string(),
        ),
        (
            "CDCHECK_ADSERVICE_GRPC_CENSUS_VERSION",
            versions::ADSERVICE_GRPC_CENSUS.to_string(),
        ),
        (
            "CDCHECK_BIN_CACHE",
            binaries::cache_root().display().to_string(),
        ),
    ];
    if let Some(src) = crate::settings::var(crate::settings::env::BOUTIQUE_SRC) {
        env.push(("CDCHECK_BOUTIQUE_SRC", src.to_string_lossy().into_owned()));
    }
    binaries::run_script("Online Boutique", INSTALL_SCRIPT, &env, &mut progress)?;
    locate()
}
