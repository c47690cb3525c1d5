//! Runs the cdcheck binary as a user does, for the tests of its commands.
#![allow(dead_code)]

/// `cdcheck load` flags of a short closed-loop run of `GetAds`: two connections for 300 ms.
pub const GET_ADS_CLOSED_LOOP: [&str; 6] = [
    "--grpc",
    "hipstershop.AdService/GetAds",
    "--connections",
    "2",
    "--duration",
    "300ms",
];

/// Runs `cdcheck args`: its exit code (-1 when a signal ended it), stdout and stderr.
pub async fn cdcheck(args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args(args)
        .output()
        .await
        .expect("run cdcheck");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
