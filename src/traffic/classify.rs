//! Classification of failures: a transport error by its chain of causes, a gRPC status by
//! whether a peer sent it.

use super::record::{ErrorClass, Outcome};

/// A gRPC status from a peer is a [`Outcome::Grpc`]; one that tonic made from a
/// transport failure (it carries a source error) is classified as that failure.
pub fn classify_status(status: &tonic::Status) -> Outcome {
    use std::error::Error as _;
    match status.source() {
        Some(source) => Outcome::Transport {
            class: classify_error(source),
        },
        None => Outcome::Grpc {
            code: status.code() as i32,
        },
    }
}

/// Classifies a transport failure by walking its chain of causes.
pub fn classify_error(error: &(dyn std::error::Error + 'static)) -> ErrorClass {
    use std::io::ErrorKind;
    let mut text = String::new();
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(r) = e.downcast_ref::<reqwest::Error>()
            && r.is_timeout()
        {
            return ErrorClass::Timeout;
        }
        if e.downcast_ref::<rustls::Error>().is_some() {
            return ErrorClass::Tls;
        }
        // `io::Error::source` skips the error it wraps: descend into it instead.
        let mut next = e.source();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                next = Some(inner as &(dyn std::error::Error + 'static));
            }
            match io.kind() {
                ErrorKind::ConnectionRefused => return ErrorClass::Refused,
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof => return ErrorClass::Reset,
                ErrorKind::TimedOut => return ErrorClass::Timeout,
                _ => {}
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            return ErrorClass::Reset;
        }
        // `h2::Error` has no source: its I/O cause is reached through `get_io`.
        if let Some(h) = e.downcast_ref::<h2::Error>() {
            if let Some(io) = h.get_io() {
                next = Some(io as &(dyn std::error::Error + 'static));
            } else if h.is_go_away() || h.is_reset() {
                return ErrorClass::Reset;
            }
        }
        text.push_str(&e.to_string().to_ascii_lowercase());
        text.push('\n');
        current = next;
    }
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&[
        "dns error",
        "failed to lookup",
        "name or service not known",
        "no such host",
    ]) {
        ErrorClass::Dns
    } else if has(&["certificate", "tls", "handshake", "alert"]) {
        ErrorClass::Tls
    } else if has(&["connection refused"]) {
        ErrorClass::Refused
    } else if has(&["timed out", "timeout", "deadline"]) {
        ErrorClass::Timeout
    } else if has(&[
        "reset",
        "closed",
        "broken pipe",
        "incomplete",
        "goaway",
        "stream error",
        "connection error",
        "eof",
    ]) {
        ErrorClass::Reset
    } else {
        ErrorClass::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified_by_kind() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_error(&refused), ErrorClass::Refused);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify_error(&reset), ErrorClass::Reset);
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(classify_error(&tls), ErrorClass::Tls);
    }
}
