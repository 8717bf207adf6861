//! W3C trace context (`traceparent`): which request published a job. The
//! worker reads it from the job's AMQP headers into the job's span, so that a
//! push can be followed from the request that caused it; the header itself
//! travels on with every retry and dead letter (republished copies keep the
//! application headers). Pure: no I/O.

/// The parts of a valid `traceparent` the worker logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, never all zero.
    pub trace_id: String,
    /// The publisher's span: 16 lowercase hex digits, never all zero.
    pub parent_id: String,
}

impl TraceParent {
    /// Parses `version-traceid-parentid-flags` as the W3C recommendation
    /// says: version `ff` and all-zero ids are invalid; a future version may
    /// append fields after the flags, version `00` may not. Anything invalid
    /// is ignored (`None`), never an error: tracing must not fail a push.
    pub fn parse(header: &str) -> Option<TraceParent> {
        let header = header.trim();
        // A future version's extra fields are cut off, not read.
        if header.len() > 512 {
            return None;
        }
        let mut parts = header.split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent_id = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        if !hex(trace_id, 32) || !hex(parent_id, 16) || !hex(flags, 2) {
            return None;
        }
        if trace_id.bytes().all(|b| b == b'0') || parent_id.bytes().all(|b| b == b'0') {
            return None;
        }
        Some(TraceParent {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recommendations_cases() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            (
                valid,
                Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
            ),
            (
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ",
                Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
            ),
            // A later version may carry more fields.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                None,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                None,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                None,
            ),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", None),
            ("", None),
            ("garbage", None),
        ];
        for (header, expected) in cases {
            let got = TraceParent::parse(header);
            let expected = expected.map(|(t, p)| TraceParent {
                trace_id: t.to_owned(),
                parent_id: p.to_owned(),
            });
            assert_eq!(got, expected, "{header:?}");
        }
        assert_eq!(TraceParent::parse(&format!("01-{}", "a".repeat(600))), None);
    }
}
