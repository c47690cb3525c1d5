//! Each built-in scenario as a test (`cargo test --test scenarios ha`), run by
//! the real runner against the reference pipeline on the local substrate. A
//! scenario passes when no check failed; its skipped checks are printed. A
//! scenario that was skipped whole (nothing of it ran) fails on the substrates
//! these tests claim to exercise, the cluster `CDCHECK_KUBECONFIG` names and the
//! local mesh; it passes, loudly, only on the local substrate without a data plane
//! outside CI. Without a substrate the tests fail in CI and are reported as
//! ignored, with the reason, elsewhere.

use std::io::Write;
use std::sync::OnceLock;

use cdcheck::report::{RunReport, Verdict};
use cdcheck::scenario::pipeline::Pipeline;
use cdcheck::scenario::runner::{self, Cluster, RunConfig};
use cdcheck::scenario::{Scenario, builtin};
use cdcheck::substrate::{SubstrateKind, binaries, local};
use libtest_mimic::{Arguments, Failed, Trial};

mod common;

use cdcheck::error_chain as chain;

/// The substrate's kubeconfig, and whether it has a data plane: `CDCHECK_KUBECONFIG`
/// (none), else the local mesh (started or reused; CI requires it), else the local
/// substrate without one.
fn kubeconfig() -> &'static Result<(std::path::PathBuf, bool), String> {
    static KUBECONFIG: OnceLock<Result<(std::path::PathBuf, bool), String>> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        if let Some(path) = std::env::var_os("CDCHECK_KUBECONFIG").filter(|v| !v.is_empty()) {
            return Ok((path.into(), false));
        }
        match common::mesh_unavailable() {
            None => return common::start_mesh().map(|k| (k, true)),
            Some(why) if std::env::var_os("CI").is_some() => {
                return Err(format!("CI needs the local mesh: {why}"));
            }
            Some(why) => {
                let _ = std::io::stderr().write_all(
                    format!("note: no local mesh ({why}): data-plane steps are skipped\n")
                        .as_bytes(),
                );
            }
        }
        let found = binaries::locate()
            .map_err(|e| format!("{} (run `cargo run -- substrate install` first)", chain(&e)))?;
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        runtime
            .block_on(local::up(&found, &local::UpOptions::default()))
            .map(|s| (s.kubeconfig, false))
            .map_err(|e| chain(&e))
    })
}

fn run_one(scenario: Scenario) -> Result<(), Failed> {
    let (path, mesh) = kubeconfig()
        .as_ref()
        .map_err(|e| Failed::from(e.as_str()))?;
    cdcheck::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failed::from(e.to_string()))?;
    let report: RunReport = runtime.block_on(async {
        let config = cdcheck::kube::config_from(path)
            .await
            .map_err(|e| Failed::from(chain(&e)))?;
        let client =
            kube::Client::try_from(config.clone()).map_err(|e| Failed::from(e.to_string()))?;
        let cluster = Cluster { config, client };
        let mut run_config = RunConfig::new(SubstrateKind::Local, Pipeline::reference());
        if *mesh {
            run_config.require = [cdcheck::report::SkipKind::NoDataPlane].into();
            run_config.data_plane = Some(cdcheck::substrate::DataPlane::local_mesh(
                common::mesh_state_dir(),
            ));
        }
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        Ok::<_, Failed>(runner::run(&cluster, vec![scenario], &run_config, tx).await)
    })?;
    let scenario = &report.scenarios[0];
    let mut out = String::new();
    for check in &scenario.checks {
        out.push_str(&format!("  {:<8} {}", check.verdict.as_str(), check.name));
        if let Some(reason) = &check.skip_reason {
            out.push_str(&format!(" ({reason})"));
        }
        out.push('\n');
        for f in &check.findings {
            out.push_str(&format!("           {f}\n"));
        }
    }
    // Shown with --nocapture (and for failures, in the message).
    print!("{out}");
    // A skip passes only where the substrate admittedly cannot run it: the local
    // substrate without a data plane, outside CI (which requires the mesh).
    let existing = std::env::var_os("CDCHECK_KUBECONFIG").is_some_and(|v| !v.is_empty());
    let skip_fails = existing || *mesh;
    match scenario.verdict {
        Verdict::Skipped if skip_fails => Err(Failed::from(format!(
            "scenario {} was skipped (nothing of it ran) on {}: {}\n{out}",
            scenario.name,
            if existing {
                "the cluster CDCHECK_KUBECONFIG names"
            } else {
                "the local mesh"
            },
            scenario.skip_reasons().join("; ")
        ))),
        Verdict::Passed | Verdict::Skipped => {
            // Skips are not passes: show them even when the test passes (not captured).
            let skipped = scenario
                .checks
                .iter()
                .filter(|c| c.verdict == Verdict::Skipped)
                .count();
            if skipped > 0 {
                let _ = std::io::stderr().write_all(
                    format!("{}: {skipped} check(s) skipped\n", scenario.name).as_bytes(),
                );
            }
            Ok(())
        }
        Verdict::Failed | Verdict::Error => Err(Failed::from(format!(
            "scenario {} {}:\n{out}{}",
            scenario.name,
            scenario.verdict,
            scenario.diagnostics.clone().unwrap_or_default()
        ))),
    }
}

fn main() {
    let args = Arguments::from_args();
    let scenarios = builtin::scenarios().expect("the built-in scenarios parse");
    // Start no substrate just to list tests or when the filter selects none of these.
    let selected = scenarios.iter().any(|s| {
        args.filter.as_deref().is_none_or(|f| {
            if args.exact {
                s.name == f
            } else {
                s.name.contains(f)
            }
        })
    });
    let unavailable = if args.list || !selected {
        None
    } else {
        match kubeconfig() {
            Ok(_) => None,
            Err(why) if std::env::var_os("CI").is_none() => Some(why.clone()),
            // In CI every trial runs and fails with the reason.
            Err(_) => None,
        }
    };
    if let Some(why) = &unavailable {
        let _ = std::io::stderr().write_all(
            format!("scenario tests NOT RUN (not in CI): no substrate: {why}\n").as_bytes(),
        );
    }
    let trials = scenarios
        .into_iter()
        .map(|s| {
            let name = s.name.clone();
            Trial::test(name, move || run_one(s)).with_ignored_flag(unavailable.is_some())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
