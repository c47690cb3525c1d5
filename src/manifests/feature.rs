//! The feature-branch rule: an image tag's pre-release names the branch, and the branch suffixes names.

use std::sync::LazyLock;

use regex::Regex;

use super::ManifestError;

/// The pipeline's rule (DESIGN.md): group 2 is the branch suffix with its dash.
static TAG_RULE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([0-9.]+)((?:-[A-Za-z0-9]+)?)(.*)$").expect("valid regex"));

/// The branch suffix of an image tag: `0.10.6-myfeature` -> `-myfeature`,
/// `0.10.6` -> empty. A tag that is not SemVer (a leading `v` allowed, as
/// upstream's `v0.10.6`) is refused.
pub fn branch_suffix(service: &str, tag: &str) -> Result<String, ManifestError> {
    let invalid = || ManifestError::InvalidTag {
        service: service.to_string(),
        tag: tag.to_string(),
    };
    let version = tag.strip_prefix('v').unwrap_or(tag);
    semver::Version::parse(version).map_err(|_| invalid())?;
    let captures = TAG_RULE.captures(version).ok_or_else(invalid)?;
    let suffix = captures.get(2).map_or("", |m| m.as_str()).to_string();
    if suffix.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ManifestError::InvalidBranchName {
            tag: tag.to_string(),
            branch: suffix,
        });
    }
    Ok(suffix)
}

/// A service deployed from a feature image beside its mainline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureBranch {
    pub service: String,
    pub tag: String,
    /// `-myfeature`; empty when the tag has no pre-release.
    pub suffix: String,
}

impl FeatureBranch {
    /// Checks the service against the catalog and derives the suffix from the tag.
    pub fn new(service: &str, tag: &str) -> Result<Self, ManifestError> {
        let workload =
            crate::catalog::find(service).ok_or_else(|| ManifestError::UnknownService {
                name: service.to_string(),
                known: crate::catalog::names().join(", "),
            })?;
        let suffix = branch_suffix(service, tag)?;
        let name = format!("{}{}", workload.name, suffix);
        if name.len() > 63 {
            return Err(ManifestError::NameTooLong { name, max: 63 });
        }
        Ok(Self {
            service: workload.name.to_string(),
            tag: tag.to_string(),
            suffix,
        })
    }

    /// Parses the CLI form `SERVICE=TAG`.
    pub fn parse(argument: &str) -> Result<Self, ManifestError> {
        let (service, tag) = argument
            .split_once('=')
            .filter(|(s, t)| !s.is_empty() && !t.is_empty())
            .ok_or_else(|| ManifestError::InvalidFeatureArgument {
                value: argument.to_string(),
            })?;
        Self::new(service.trim(), tag.trim())
    }

    /// `frontend-myfeature`: the Deployment, label and Service name of the branch.
    pub fn name(&self) -> String {
        format!("{}{}", self.service, self.suffix)
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("0.10.6-myfeature", "-myfeature")]
    #[case("0.10.6", "")]
    #[case("v0.10.6", "")]
    #[case("v0.10.6-myfeature", "-myfeature")]
    #[case("1.2.3-feat42", "-feat42")]
    #[case("0.10.6-myfeature.1", "-myfeature")]
    #[case("0.10.6-my-feature", "-my")]
    #[case("0.10.6+build.7", "")]
    #[case("0.10.6-rc1+build", "-rc1")]
    fn tag_names_its_branch_by_the_pipeline_rule(#[case] tag: &str, #[case] suffix: &str) {
        assert_eq!(branch_suffix("frontend", tag).unwrap(), suffix);
    }

    #[rstest]
    #[case("latest")]
    #[case("0.10")]
    #[case("0.10.6.1")]
    #[case("myfeature")]
    #[case("")]
    #[case("0.10.6-")]
    #[case("01.2.3")]
    fn tag_that_is_not_semver_is_refused_naming_it(#[case] tag: &str) {
        let error = branch_suffix("frontend", tag).unwrap_err();
        assert!(
            matches!(error, ManifestError::InvalidTag { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains(&format!("{tag:?}")), "{error}");
    }

    #[test]
    fn uppercase_branch_is_refused_because_names_must_be_lowercase() {
        let error = branch_suffix("frontend", "0.10.6-MyFeature").unwrap_err();
        assert!(error.to_string().contains("-MyFeature"), "{error}");
    }

    #[test]
    fn feature_argument_names_deployment_and_service() {
        let feature = FeatureBranch::parse("frontend=0.10.6-myfeature").unwrap();
        assert_eq!(feature.name(), "frontend-myfeature");
        assert_eq!(feature.tag, "0.10.6-myfeature");
    }

    #[rstest]
    #[case("frontend")]
    #[case("=0.10.6")]
    #[case("frontend=")]
    fn feature_argument_without_service_and_tag_is_refused(#[case] argument: &str) {
        let error = FeatureBranch::parse(argument).unwrap_err();
        assert!(error.to_string().contains(argument), "{error}");
    }

    #[test]
    fn unknown_service_is_refused_naming_it_and_the_known_ones() {
        let error = FeatureBranch::parse("fronted=0.10.6-x")
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"fronted\""), "{error}");
        assert!(error.contains("frontend"), "{error}");
    }

    #[test]
    fn branch_name_longer_than_a_dns_label_is_refused() {
        let tag = format!("0.10.6-{}", "a".repeat(60));
        let error = FeatureBranch::new("recommendationservice", &tag).unwrap_err();
        assert!(
            matches!(error, ManifestError::NameTooLong { .. }),
            "{error:?}"
        );
    }
}
