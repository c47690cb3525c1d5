//! The scenarios shipped in `scenarios/`, compiled into the binary so `cdcheck run`
//! works from any directory. A test keeps this list and the directory equal.

pub const BUILTIN: &[(&str, &str)] = &[
    (
        "broken-release.yaml",
        include_str!("../../scenarios/broken-release.yaml"),
    ),
    (
        "environments-rbac.yaml",
        include_str!("../../scenarios/environments-rbac.yaml"),
    ),
    (
        "feature-branch.yaml",
        include_str!("../../scenarios/feature-branch.yaml"),
    ),
    ("ha.yaml", include_str!("../../scenarios/ha.yaml")),
    ("https.yaml", include_str!("../../scenarios/https.yaml")),
    (
        "rollback-bluegreen.yaml",
        include_str!("../../scenarios/rollback-bluegreen.yaml"),
    ),
    (
        "rollback.yaml",
        include_str!("../../scenarios/rollback.yaml"),
    ),
    ("smoke.yaml", include_str!("../../scenarios/smoke.yaml")),
    (
        "zero-downtime-bluegreen.yaml",
        include_str!("../../scenarios/zero-downtime-bluegreen.yaml"),
    ),
    (
        "zero-downtime-rolling.yaml",
        include_str!("../../scenarios/zero-downtime-rolling.yaml"),
    ),
];

/// The built-in scenarios, parsed (they are tested to parse).
pub fn scenarios() -> Result<Vec<super::Scenario>, super::SpecError> {
    let mut out = BUILTIN
        .iter()
        .map(|(file, text)| {
            super::Scenario::parse(&std::path::Path::new("scenarios").join(file), text)
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_file_of_the_scenarios_directory_is_built_in_and_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let mut built_in: Vec<String> = super::BUILTIN.iter().map(|(f, _)| f.to_string()).collect();
        built_in.sort();
        assert_eq!(on_disk, built_in);
        assert_eq!(super::scenarios().unwrap().len(), built_in.len());
    }
}
