//! An image reference (`[registry[:port]/]path/name[:tag][@digest]`), parsed once: a colon
//! before the last `/` is a registry's port, not a tag.

/// The parts of an image reference, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// Everything before the tag and digest: `registry:5000/shop/frontend`.
    pub repository: &'a str,
    pub tag: Option<&'a str>,
    /// `sha256:...`, without the `@`.
    pub digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    pub fn parse(image: &'a str) -> ImageRef<'a> {
        let (named, digest) = match image.split_once('@') {
            Some((named, digest)) => (named, Some(digest)),
            None => (image, None),
        };
        match named.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => ImageRef {
                repository,
                tag: Some(tag),
                digest,
            },
            _ => ImageRef {
                repository: named,
                tag: None,
                digest,
            },
        }
    }

    /// The repository's last path segment: `frontend`.
    pub fn name(&self) -> &'a str {
        self.repository
            .rsplit('/')
            .next()
            .unwrap_or(self.repository)
    }

    /// The same repository at another tag, without a digest (which names the old content).
    pub fn with_tag(&self, tag: &str) -> String {
        format!("{}:{tag}", self.repository)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_splits_into_repository_tag_and_digest_and_a_port_is_no_tag() {
        let full = ImageRef::parse("registry:5000/shop/frontend:v0.10.6@sha256:abc");
        assert_eq!(full.repository, "registry:5000/shop/frontend");
        assert_eq!(full.tag, Some("v0.10.6"));
        assert_eq!(full.digest, Some("sha256:abc"));
        assert_eq!(full.name(), "frontend");
        assert_eq!(full.with_tag("x"), "registry:5000/shop/frontend:x");
        let port_only = ImageRef::parse("registry:5000/shop/frontend");
        assert_eq!(port_only.tag, None);
        assert_eq!(port_only.name(), "frontend");
        let bare = ImageRef::parse("redis");
        assert_eq!(
            (bare.repository, bare.tag, bare.digest),
            ("redis", None, None)
        );
        let digest_only = ImageRef::parse("redis@sha256:abc");
        assert_eq!((digest_only.name(), digest_only.tag), ("redis", None));
    }
}
