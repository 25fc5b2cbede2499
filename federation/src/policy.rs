//! Closed federation: which servers we talk to. `allow` (empty: everyone) and `deny` are
//! server-name patterns with `*` wildcards; deny wins. Applied to inbound requests and
//! outbound traffic alike — and only sound when every server of the federation carries the
//! same lists.

/// The federation policy of this server.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Federation off: no server may talk to us and we talk to none.
    pub disabled: bool,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern.eq_ignore_ascii_case(name),
        Some((head, rest)) => {
            let lower = name.to_ascii_lowercase();
            let Some(tail) = lower.strip_prefix(&head.to_ascii_lowercase()) else { return false };
            (0..=tail.len()).filter(|i| tail.is_char_boundary(*i)).any(|i| glob(rest, &tail[i..]))
        }
    }
}

impl Policy {
    /// Whether we may exchange federation traffic with `server`.
    pub fn permits(&self, server: &str) -> bool {
        if self.disabled || self.deny.iter().any(|p| glob(p, server)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|p| glob(p, server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_and_deny_patterns() {
        let policy = Policy {
            disabled: false,
            allow: vec!["*.gov.example".into(), "partner.test:8448".into()],
            deny: vec!["bad.gov.example".into()],
        };
        assert!(policy.permits("mois.gov.example"));
        assert!(policy.permits("MOIS.GOV.EXAMPLE"));
        assert!(policy.permits("partner.test:8448"));
        assert!(!policy.permits("partner.test"));
        assert!(!policy.permits("bad.gov.example"), "deny wins");
        assert!(!policy.permits("evil.example"));
        assert!(Policy::default().permits("anyone.example"), "no lists: open federation");
        assert!(!Policy { disabled: true, ..Policy::default() }.permits("mois.gov.example"));
    }
}
