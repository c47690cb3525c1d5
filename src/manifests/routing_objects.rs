//! The ingress Gateway and the `frontend` and `adservice` VirtualServices with their session routes.

use super::{istio, ManifestError, Object, Options};

pub fn gateway(_options: &Options) -> istio::Gateway {
    todo!("gateway")
}

pub fn virtual_services(_options: &Options) -> Result<Vec<Object>, ManifestError> {
    todo!("vs")
}
