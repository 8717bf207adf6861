//! The two lanes a job can arrive by (CONTRACT §9): the ordinary work queue
//! (and its shards), and the urgent lane, a queue of its own whose jobs never
//! wait behind a campaign. Pure: names and the header value only.

/// Which queue family a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Lane {
    /// The work queue and its shards: campaigns, fan-outs, everything else.
    #[default]
    Normal,
    /// `<queue>.urgent`: one-time codes, chat messages.
    Urgent,
}

impl Lane {
    /// The metric label, and the value of a dead letter's `x-misiva-lane`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Normal => "normal",
            Lane::Urgent => "urgent",
        }
    }

    /// Reads a dead letter's `x-misiva-lane`; anything else is the normal lane
    /// (dead letters from before the lane existed carry none).
    pub fn from_header(value: &str) -> Lane {
        if value == "urgent" {
            Lane::Urgent
        } else {
            Lane::Normal
        }
    }
}

/// The urgent lane's queue for a work queue.
pub fn urgent_queue(queue: &str) -> String {
    format!("{queue}.urgent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_header_values() {
        for (lane, text) in [(Lane::Normal, "normal"), (Lane::Urgent, "urgent")] {
            assert_eq!(lane.as_str(), text);
            assert_eq!(Lane::from_header(text), lane);
        }
        assert_eq!(Lane::from_header("URGENT"), Lane::Normal);
        assert_eq!(Lane::from_header(""), Lane::Normal);
        assert_eq!(urgent_queue("misiva.jobs"), "misiva.jobs.urgent");
    }
}
