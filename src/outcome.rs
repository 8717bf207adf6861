//! The contract's outcome rules (CONTRACT §3), in one place and without I/O:
//! [`classify`] turns one APNs answer into a [`TokenOutcome`]; [`settle`] turns the
//! outcomes of a whole job into the one [`Settlement`] the AMQP shell carries out.
//! Nothing else in the crate decides between ack, requeue and dead letter.

use crate::job::{ChannelId, DeviceToken};

/// What came back for one device token's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApnsAnswer {
    /// APNs answered: the HTTP status, the `reason` of the JSON body when there was
    /// one, and the `timestamp` (ms) that 410 answers carry.
    Status {
        code: u16,
        reason: Option<String>,
        timestamp_ms: Option<u64>,
    },
    /// No answer: connection lost, GOAWAY before processing, deadline passed, TLS.
    Transport(String),
}

/// The fate of one token (CONTRACT §3, "outcome" column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOutcome {
    Delivered,
    /// The token is dead or wrong: tell the app, settle the token.
    Feedback {
        reason: String,
        timestamp_ms: Option<u64>,
    },
    /// The request can never succeed as it is: dead letter.
    Permanent {
        status: u16,
        reason: String,
    },
    /// The app's credentials were refused. `renew` means "a new provider token
    /// fixes it" (`ExpiredProviderToken`), which the APNs client does at once.
    Credentials {
        status: u16,
        reason: String,
        renew: bool,
    },
    /// Worth trying again later.
    Transient {
        detail: String,
    },
}

/// The classification table. Every APNs status and reason from Apple's
/// documentation has a row; unknown reasons fall back to their status class.
pub fn classify(answer: &ApnsAnswer) -> TokenOutcome {
    let (code, reason, timestamp_ms) = match answer {
        ApnsAnswer::Transport(detail) => {
            return TokenOutcome::Transient {
                detail: detail.clone(),
            };
        }
        ApnsAnswer::Status {
            code,
            reason,
            timestamp_ms,
        } => (*code, reason.as_deref().unwrap_or(""), *timestamp_ms),
    };
    let feedback = |reason: &str| TokenOutcome::Feedback {
        reason: reason.to_owned(),
        timestamp_ms,
    };
    let permanent = |reason: &str| TokenOutcome::Permanent {
        status: code,
        reason: if reason.is_empty() {
            format!("Http{code}")
        } else {
            reason.to_owned()
        },
    };
    let credentials = |renew: bool| TokenOutcome::Credentials {
        status: code,
        reason: reason.to_owned(),
        renew,
    };
    let transient = || TokenOutcome::Transient {
        detail: if reason.is_empty() {
            format!("APNs answered {code}")
        } else {
            format!("APNs answered {code} {reason}")
        },
    };
    match (code, reason) {
        (200, _) => TokenOutcome::Delivered,
        (410, "") => feedback("Unregistered"),
        (410, r) => feedback(r),
        (400, r @ ("BadDeviceToken" | "DeviceTokenNotForTopic")) => feedback(r),
        // IdleTimeout is a connection-level reason (sent with GOAWAY): try again.
        (400, "IdleTimeout") => transient(),
        (403, "ExpiredProviderToken") => credentials(true),
        (403, _) => credentials(false),
        (429, "TooManyProviderTokenUpdates") => credentials(false),
        (429, _) => transient(),
        (400 | 404 | 405 | 413, r) => permanent(r),
        (500..=599, _) => transient(),
        // A status Apple does not document: a client error will not fix itself,
        // anything else may.
        (400..=499, r) => permanent(r),
        _ => transient(),
    }
}

/// The classification of a broadcast's answer (CONTRACT §7): a channel APNs
/// does not know (or no longer has) is feedback about the channel; the
/// device-token reasons cannot be about a broadcast and are permanent; the
/// rest is as for a device push.
pub fn classify_broadcast(answer: &ApnsAnswer) -> TokenOutcome {
    let ApnsAnswer::Status {
        code,
        reason: Some(reason),
        ..
    } = answer
    else {
        return classify(answer);
    };
    match (*code, reason.as_str()) {
        (400..=499, "ChannelNotRegistered" | "BadChannelId") | (410, _) => TokenOutcome::Feedback {
            reason: reason.clone(),
            timestamp_ms: None,
        },
        (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => TokenOutcome::Permanent {
            status: *code,
            reason: reason.clone(),
        },
        _ => classify(answer),
    }
}

/// The settlement of a channel job, whose one request had `outcome`: the
/// job is delivered, or its channel is reported, or the whole job goes to a
/// dead letter or a retry tier as a device push's token would.
pub fn settle_broadcast(
    channel: &ChannelId,
    outcome: TokenOutcome,
    attempt: u32,
    policy: RetryPolicy,
) -> Settlement {
    let mut settlement = Settlement {
        attempt,
        ..Settlement::default()
    };
    let retry_or_give_up = |settlement: &mut Settlement, detail: String| {
        if attempt >= policy.max_attempts || policy.tiers == 0 {
            settlement.dead_letters.push(DeadLetter {
                tokens: None,
                reason: RETRIES_EXHAUSTED.to_owned(),
                detail: format!("gave up after {attempt} attempts; last error: {detail}"),
            });
        } else {
            // A channel job has no tokens: its retry carries the whole body.
            settlement.retry = Some(Retry {
                tokens: Vec::new(),
                tier: (attempt.saturating_sub(1) as usize).min(policy.tiers - 1),
                detail,
            });
        }
    };
    match outcome {
        TokenOutcome::Delivered => {}
        TokenOutcome::Feedback {
            reason,
            timestamp_ms,
        } => settlement.feedback.push(Feedback {
            recipient: Recipient::Channel(channel.clone()),
            reason,
            timestamp_ms,
        }),
        TokenOutcome::Permanent { status, reason } => settlement.dead_letters.push(DeadLetter {
            tokens: None,
            detail: format!("APNs answered {status} {reason} to the broadcast"),
            reason: snake_case(&reason),
        }),
        TokenOutcome::Credentials { status, reason, .. } => retry_or_give_up(
            &mut settlement,
            format!("APNs refused the credentials: {status} {reason}"),
        ),
        TokenOutcome::Transient { detail } => retry_or_give_up(&mut settlement, detail),
    }
    settlement
}

/// Whether an answer counts toward the app's circuit breaker: failures of the
/// way to APNs or of the app's credentials, which every other token of the
/// app would meet too. Answers about one device (`429 TooManyRequests`, a bad
/// token, a permanent rejection) never pause the app's other tokens.
pub fn counts_against_app(answer: &ApnsAnswer) -> bool {
    match answer {
        ApnsAnswer::Transport(_) => true,
        ApnsAnswer::Status { code, reason, .. } => matches!(
            (*code, reason.as_deref()),
            (429, Some("TooManyProviderTokenUpdates")) | (403 | 500..=599, _)
        ),
    }
}

/// Whom a feedback event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// A device token (CONTRACT §3).
    Token(DeviceToken),
    /// A broadcast channel (CONTRACT §7).
    Channel(ChannelId),
}

/// A feedback event to publish: a dead device token, or a channel APNs does
/// not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    pub recipient: Recipient,
    pub reason: String,
    pub timestamp_ms: Option<u64>,
}

/// A dead letter to publish: the job (or only `tokens` of it), with a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The tokens the dead letter keeps; `None` keeps the body as it came.
    pub tokens: Option<Vec<DeviceToken>>,
    /// snake_case code for `x-misiva-reason`.
    pub reason: String,
    /// Human text for `x-misiva-detail`.
    pub detail: String,
}

/// A delayed retry: the unsettled tokens go to a retry tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub tokens: Vec<DeviceToken>,
    /// Index into the configured retry delays.
    pub tier: usize,
    /// The last transient error, for `x-misiva-last-error`.
    pub detail: String,
}

/// How many attempts a job gets and over how many delay tiers they spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub tiers: usize,
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            tiers: 5,
            max_attempts: 8,
        }
    }
}

/// The single decision for one delivery: publish every feedback event, every
/// dead letter and the retry (each confirmed by the broker), then ack.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settlement {
    /// Which attempt this delivery was (1 for the first), for the headers.
    pub attempt: u32,
    pub feedback: Vec<Feedback>,
    pub dead_letters: Vec<DeadLetter>,
    pub retry: Option<Retry>,
}

/// The settlement of one delivery and what its dead letters and feedback
/// events must say about the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub settlement: Settlement,
    pub app: String,
    pub job_id: Option<String>,
    /// Shared with the app's client when it is the app's default topic.
    pub topic: Option<std::sync::Arc<str>>,
    /// Notifications APNs accepted for this delivery.
    pub delivered: usize,
}

impl Verdict {
    /// The verdict of a job that cannot even be attempted (invalid, unknown
    /// app, poison, panic): one dead letter of the whole body, with `reason`
    /// and a bounded `detail`, for the default app unless the caller names
    /// the job's own.
    pub fn rejected(attempt: u32, reason: &str, detail: String, job_id: Option<String>) -> Verdict {
        Verdict {
            settlement: reject_job(attempt, reason, detail),
            app: crate::job::AppName::default().into_string(),
            job_id,
            topic: None,
            delivered: 0,
        }
    }
}

/// The dead-letter reason of a job that failed validation.
pub const INVALID_JOB: &str = "invalid_job";
/// The dead-letter reason of a job whose `app` has no credentials here.
pub const UNKNOWN_APP: &str = "unknown_app";
/// The dead-letter reason of tokens that failed transiently on every attempt.
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";

/// The dead-letter reason of a message the broker delivered more than
/// `MISIVA_MAX_DELIVERIES` times without it being settled.
pub const POISON: &str = "poison";
/// The dead-letter reason of a job whose processing panicked.
pub const WORKER_PANIC: &str = "worker_panic";

/// The settlement of a job that cannot even be attempted (invalid, unknown
/// app, poison, panic). The detail is bounded here, whatever its source.
pub fn reject_job(attempt: u32, reason: &str, detail: String) -> Settlement {
    Settlement {
        attempt,
        dead_letters: vec![DeadLetter {
            tokens: None,
            reason: reason.to_owned(),
            detail: crate::bounded::detail(&detail),
        }],
        ..Settlement::default()
    }
}

/// Combines the outcome of every token of one job, on its `attempt`-th
/// delivery, into its settlement. Delivered tokens settle nothing, so callers
/// may leave them out; the tokens are borrowed from the job and copied only
/// into the settlement's feedback, dead letters and retry.
pub fn settle<'a>(
    outcomes: impl IntoIterator<Item = (&'a DeviceToken, TokenOutcome)>,
    attempt: u32,
    policy: RetryPolicy,
) -> Settlement {
    let mut feedback = Vec::new();
    // Permanent rejections, grouped by APNs reason: one dead letter per reason.
    let mut rejected: Vec<(u16, String, Vec<DeviceToken>)> = Vec::new();
    let mut unsettled = Vec::new();
    let mut last_error: Option<String> = None;
    for (token, outcome) in outcomes {
        let token = token.clone();
        match outcome {
            TokenOutcome::Delivered => {}
            TokenOutcome::Feedback {
                reason,
                timestamp_ms,
            } => feedback.push(Feedback {
                recipient: Recipient::Token(token),
                reason,
                timestamp_ms,
            }),
            TokenOutcome::Permanent { status, reason } => {
                match rejected.iter_mut().find(|(_, r, _)| *r == reason) {
                    Some((_, _, tokens)) => tokens.push(token),
                    None => rejected.push((status, reason, vec![token])),
                }
            }
            TokenOutcome::Credentials { status, reason, .. } => {
                last_error = Some(format!("APNs refused the credentials: {status} {reason}"));
                unsettled.push(token);
            }
            TokenOutcome::Transient { detail } => {
                last_error = Some(detail);
                unsettled.push(token);
            }
        }
    }
    let mut dead_letters: Vec<DeadLetter> = rejected
        .into_iter()
        .map(|(status, reason, tokens)| DeadLetter {
            detail: format!(
                "APNs answered {status} {reason} for {} of the job's tokens",
                tokens.len()
            ),
            reason: snake_case(&reason),
            tokens: Some(tokens),
        })
        .collect();
    let mut retry = None;
    if !unsettled.is_empty() {
        let detail = last_error.unwrap_or_default();
        if attempt >= policy.max_attempts || policy.tiers == 0 {
            dead_letters.push(DeadLetter {
                reason: RETRIES_EXHAUSTED.to_owned(),
                detail: format!("gave up after {attempt} attempts; last error: {detail}"),
                tokens: Some(unsettled),
            });
        } else {
            retry = Some(Retry {
                tokens: unsettled,
                tier: (attempt.saturating_sub(1) as usize).min(policy.tiers - 1),
                detail,
            });
        }
    }
    Settlement {
        attempt,
        feedback,
        dead_letters,
        retry,
    }
}

/// Every reason Apple documents for an APNs answer. Metrics label answers
/// with these only: a reason outside the list (an endpoint that is not APNs)
/// is `other`, so a label can never take unbounded values.
pub const APNS_REASONS: &[&str] = &[
    "BadCollapseId",
    "BadDeviceToken",
    "BadExpirationDate",
    "BadMessageId",
    "BadPriority",
    "BadTopic",
    "DeviceTokenNotForTopic",
    "DuplicateHeaders",
    "IdleTimeout",
    "InvalidPushType",
    "MissingDeviceToken",
    "MissingTopic",
    "PayloadEmpty",
    "TopicDisallowed",
    "BadCertificate",
    "BadCertificateEnvironment",
    "ExpiredProviderToken",
    "Forbidden",
    "InvalidProviderToken",
    "MissingProviderToken",
    "UnrelatedKeyIdInToken",
    "BadEnvironmentKeyIdInToken",
    "BadPath",
    "MethodNotAllowed",
    "ExpiredToken",
    "Unregistered",
    "PayloadTooLarge",
    "TooManyProviderTokenUpdates",
    "TooManyRequests",
    "InternalServerError",
    "ServiceUnavailable",
    "Shutdown",
    // Broadcasts and channel management (CONTRACT §7).
    "BadChannelId",
    "ChannelNotRegistered",
    "FeatureNotEnabled",
    "MissingChannelId",
    "BadRequestParams",
    "BadRequestPayload",
    "CannotCreateChannelConfig",
];

/// The metric label of an APNs reason: Apple's own, `none`, or `other`.
pub fn reason_label(reason: Option<&str>) -> &'static str {
    match reason {
        None | Some("") => "none",
        Some(r) => APNS_REASONS
            .iter()
            .find(|known| **known == r)
            .copied()
            .unwrap_or("other"),
    }
}

/// The metric label of an APNs status: the statuses Apple documents, else `other`.
pub fn status_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        400 => "400",
        403 => "403",
        404 => "404",
        405 => "405",
        410 => "410",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

/// The dead-letter reasons Misiva writes: its own codes, then Apple's
/// permanent reasons in snake_case.
static DEAD_LETTER_REASONS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    [
        INVALID_JOB,
        UNKNOWN_APP,
        RETRIES_EXHAUSTED,
        POISON,
        WORKER_PANIC,
    ]
    .iter()
    .map(|r| (*r).to_owned())
    .chain(APNS_REASONS.iter().map(|r| snake_case(r)))
    .chain((400..=599).map(|code| snake_case(&format!("Http{code}"))))
    .collect()
});

/// The metric label of a dead-letter reason (`x-misiva-reason`): a known
/// code, else `other`.
pub fn dead_letter_label(reason: &str) -> &'static str {
    DEAD_LETTER_REASONS
        .iter()
        .find(|known| known.as_str() == reason)
        .map_or("other", String::as_str)
}

/// `TopicDisallowed` → `topic_disallowed`: dead-letter reasons are snake_case codes.
pub fn snake_case(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len() + 4);
    for (i, c) in reason.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str) -> ApnsAnswer {
        ApnsAnswer::Status {
            code,
            reason: (!reason.is_empty()).then(|| reason.to_owned()),
            timestamp_ms: None,
        }
    }

    #[derive(Debug, PartialEq)]
    enum Kind {
        Delivered,
        Feedback,
        Permanent,
        Credentials,
        Renew,
        Transient,
    }

    fn kind(o: &TokenOutcome) -> Kind {
        match o {
            TokenOutcome::Delivered => Kind::Delivered,
            TokenOutcome::Feedback { .. } => Kind::Feedback,
            TokenOutcome::Permanent { .. } => Kind::Permanent,
            TokenOutcome::Credentials { renew: true, .. } => Kind::Renew,
            TokenOutcome::Credentials { renew: false, .. } => Kind::Credentials,
            TokenOutcome::Transient { .. } => Kind::Transient,
        }
    }

    /// CONTRACT §7's table of broadcast answers.
    #[test]
    fn broadcast_answers_follow_the_channel_table() {
        use Kind::*;
        let table = [
            (status(200, ""), Delivered),
            (status(400, "ChannelNotRegistered"), Feedback),
            (status(404, "ChannelNotRegistered"), Feedback),
            (status(400, "BadChannelId"), Feedback),
            (status(410, "ChannelNotRegistered"), Feedback),
            (status(400, "FeatureNotEnabled"), Permanent),
            (status(400, "MissingChannelId"), Permanent),
            (status(400, "BadExpirationDate"), Permanent),
            (status(400, "BadPriority"), Permanent),
            (status(400, "BadRequestParams"), Permanent),
            (status(400, "BadRequestPayload"), Permanent),
            (status(413, "PayloadTooLarge"), Permanent),
            (status(400, "TopicDisallowed"), Permanent),
            (status(400, "BadDeviceToken"), Permanent),
            (status(400, "DeviceTokenNotForTopic"), Permanent),
            (status(404, "BadPath"), Permanent),
            (status(403, "InvalidProviderToken"), Credentials),
            (status(403, "ExpiredProviderToken"), Renew),
            (status(429, "TooManyRequests"), Transient),
            (status(500, "InternalServerError"), Transient),
            (status(503, "ServiceUnavailable"), Transient),
            (ApnsAnswer::Transport("GOAWAY".into()), Transient),
        ];
        for (answer, expected) in table {
            assert_eq!(kind(&classify_broadcast(&answer)), expected, "{answer:?}");
        }
    }

    #[test]
    fn a_broadcast_settles_the_whole_job() {
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==".into()).unwrap();
        let policy = RetryPolicy::default();
        let settle = |answer: ApnsAnswer, attempt| {
            settle_broadcast(&channel, classify_broadcast(&answer), attempt, policy)
        };
        assert_eq!(
            settle(status(200, ""), 1),
            Settlement {
                attempt: 1,
                ..Settlement::default()
            }
        );
        let gone = settle(status(400, "ChannelNotRegistered"), 1);
        assert_eq!(
            gone.feedback,
            vec![Feedback {
                recipient: Recipient::Channel(channel.clone()),
                reason: "ChannelNotRegistered".into(),
                timestamp_ms: None,
            }]
        );
        assert!(gone.dead_letters.is_empty() && gone.retry.is_none());
        let refused = settle(status(400, "BadExpirationDate"), 1);
        assert_eq!(refused.dead_letters.len(), 1);
        assert_eq!(refused.dead_letters[0].reason, "bad_expiration_date");
        assert_eq!(refused.dead_letters[0].tokens, None);
        let busy = settle(status(503, "ServiceUnavailable"), 2);
        let retry = busy.retry.expect("a 503 is retried");
        assert!(retry.tokens.is_empty());
        assert_eq!(retry.tier, 1);
        let last = settle(status(503, "ServiceUnavailable"), policy.max_attempts);
        assert!(last.retry.is_none());
        assert_eq!(last.dead_letters[0].reason, RETRIES_EXHAUSTED);
    }

    /// Apple's full list of statuses and reasons, plus the unknowns.
    #[test]
    fn classification_table() {
        use Kind::*;
        let table = [
            (200, "", Delivered),
            (400, "BadCollapseId", Permanent),
            (400, "BadDeviceToken", Feedback),
            (400, "BadExpirationDate", Permanent),
            (400, "BadMessageId", Permanent),
            (400, "BadPriority", Permanent),
            (400, "BadTopic", Permanent),
            (400, "DeviceTokenNotForTopic", Feedback),
            (400, "DuplicateHeaders", Permanent),
            (400, "IdleTimeout", Transient),
            (400, "InvalidPushType", Permanent),
            (400, "MissingDeviceToken", Permanent),
            (400, "MissingTopic", Permanent),
            (400, "PayloadEmpty", Permanent),
            (400, "TopicDisallowed", Permanent),
            (400, "SomethingNew", Permanent),
            (403, "BadCertificate", Credentials),
            (403, "BadCertificateEnvironment", Credentials),
            (403, "ExpiredProviderToken", Renew),
            (403, "Forbidden", Credentials),
            (403, "InvalidProviderToken", Credentials),
            (403, "MissingProviderToken", Credentials),
            (403, "UnrelatedKeyIdInToken", Credentials),
            (403, "BadEnvironmentKeyIdInToken", Credentials),
            (404, "BadPath", Permanent),
            (405, "MethodNotAllowed", Permanent),
            (410, "ExpiredToken", Feedback),
            (410, "Unregistered", Feedback),
            (410, "", Feedback),
            (413, "PayloadTooLarge", Permanent),
            (429, "TooManyProviderTokenUpdates", Credentials),
            (429, "TooManyRequests", Transient),
            (500, "InternalServerError", Transient),
            (503, "ServiceUnavailable", Transient),
            (503, "Shutdown", Transient),
            (502, "", Transient),
            (418, "", Permanent),
            (302, "", Transient),
        ];
        for (code, reason, expected) in table {
            assert_eq!(
                kind(&classify(&status(code, reason))),
                expected,
                "{code} {reason}"
            );
        }
        assert_eq!(
            classify(&ApnsAnswer::Transport("GOAWAY".into())),
            TokenOutcome::Transient {
                detail: "GOAWAY".into()
            }
        );
        assert_eq!(
            classify(&status(413, "")),
            TokenOutcome::Permanent {
                status: 413,
                reason: "Http413".into()
            }
        );
    }

    #[test]
    fn only_app_wide_failures_count_toward_the_breaker() {
        let table = [
            (200, "", false),
            (410, "Unregistered", false),
            (400, "BadDeviceToken", false),
            (400, "BadTopic", false),
            (413, "PayloadTooLarge", false),
            (429, "TooManyRequests", false),
            (429, "", false),
            (429, "TooManyProviderTokenUpdates", true),
            (403, "InvalidProviderToken", true),
            (403, "ExpiredProviderToken", true),
            (500, "InternalServerError", true),
            (503, "ServiceUnavailable", true),
        ];
        for (code, reason, counts) in table {
            assert_eq!(
                counts_against_app(&status(code, reason)),
                counts,
                "{code} {reason}"
            );
        }
        assert!(counts_against_app(&ApnsAnswer::Transport("reset".into())));
    }

    #[test]
    fn feedback_keeps_the_apns_timestamp() {
        let answer = ApnsAnswer::Status {
            code: 410,
            reason: Some("Unregistered".into()),
            timestamp_ms: Some(1_700_000_000_000),
        };
        assert_eq!(
            classify(&answer),
            TokenOutcome::Feedback {
                reason: "Unregistered".into(),
                timestamp_ms: Some(1_700_000_000_000)
            }
        );
    }

    fn token(n: u8) -> DeviceToken {
        DeviceToken::parse("token", &format!("{n:02x}").repeat(32)).unwrap()
    }

    #[test]
    fn settlement_rules() {
        let policy = RetryPolicy {
            tiers: 3,
            max_attempts: 4,
        };
        let delivered = TokenOutcome::Delivered;
        let gone = classify(&status(410, "Unregistered"));
        let bad_topic = classify(&status(400, "BadTopic"));
        let too_big = classify(&status(413, "PayloadTooLarge"));
        let busy = classify(&status(503, "ServiceUnavailable"));
        let refused = classify(&status(403, "InvalidProviderToken"));

        assert_eq!(
            settle(vec![(&token(1), delivered.clone())], 1, policy),
            Settlement {
                attempt: 1,
                ..Settlement::default()
            }
        );
        let s = settle(
            vec![(&token(1), delivered.clone()), (&token(2), gone.clone())],
            1,
            policy,
        );
        assert_eq!(
            s.feedback,
            vec![Feedback {
                recipient: Recipient::Token(token(2)),
                reason: "Unregistered".into(),
                timestamp_ms: None
            }]
        );
        assert!(s.dead_letters.is_empty() && s.retry.is_none());

        // Everything at once: feedback, two dead letters by reason, one retry.
        let s = settle(
            vec![
                (&token(1), bad_topic.clone()),
                (&token(2), busy.clone()),
                (&token(3), gone),
                (&token(4), too_big),
                (&token(5), bad_topic),
                (&token(6), refused),
                (&token(7), delivered),
            ],
            2,
            policy,
        );
        assert_eq!(s.feedback.len(), 1);
        let reasons: Vec<_> = s
            .dead_letters
            .iter()
            .map(|d| (d.reason.as_str(), d.tokens.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("bad_topic", Some(vec![token(1), token(5)])),
                ("payload_too_large", Some(vec![token(4)])),
            ]
        );
        let retry = s.retry.unwrap();
        assert_eq!(
            retry.tokens,
            vec![token(2), token(6)],
            "only the unsettled tokens"
        );
        assert_eq!(retry.tier, 1, "attempt 2 goes to the second tier");
        assert!(retry.detail.contains("InvalidProviderToken"));
    }

    #[test]
    fn tiers_climb_then_stay_and_attempts_run_out() {
        let policy = RetryPolicy {
            tiers: 3,
            max_attempts: 5,
        };
        let one = token(1);
        let busy = || vec![(&one, classify(&status(500, "InternalServerError")))];
        let tiers: Vec<_> = (1..5)
            .map(|attempt| settle(busy(), attempt, policy).retry.unwrap().tier)
            .collect();
        assert_eq!(tiers, vec![0, 1, 2, 2]);
        let last = settle(busy(), 5, policy);
        assert_eq!(last.retry, None);
        assert_eq!(last.dead_letters.len(), 1);
        assert_eq!(last.dead_letters[0].reason, RETRIES_EXHAUSTED);
        assert!(last.dead_letters[0].detail.contains("5 attempts"));
        assert!(last.dead_letters[0].detail.contains("InternalServerError"));
    }

    #[test]
    fn reasons_become_snake_case() {
        assert_eq!(snake_case("TopicDisallowed"), "topic_disallowed");
        assert_eq!(snake_case("Http413"), "http413");
        assert_eq!(snake_case("BadCollapseId"), "bad_collapse_id");
    }
}
