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
    if suffix
        .bytes()
        .any(|b| b.is_ascii_uppercase())
    {
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
        let workload = crate::catalog::find(service).ok_or_else(|| ManifestError::UnknownService {
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
