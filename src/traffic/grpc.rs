//! The AdService protocol (`hipstershop.AdService/GetAds`), compiled from `proto/demo.proto` by build.rs.

/// Generated messages, `ad_service_client` and `ad_service_server`.
#[allow(clippy::all, missing_docs)]
pub mod hipstershop {
    tonic::include_proto!("hipstershop");
}

pub use hipstershop::ad_service_client::AdServiceClient;
pub use hipstershop::ad_service_server::{AdService, AdServiceServer};
pub use hipstershop::{Ad, AdRequest, AdResponse};

/// The fully qualified service name, as health checks and routes name it.
pub const AD_SERVICE: &str = "hipstershop.AdService";
/// The standard gRPC health service.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
