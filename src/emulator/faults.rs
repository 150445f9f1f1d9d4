//! The faults the emulator injects on demand (latency, 5xx, 429, dropped connections,
//! calls carried out but never answered), drawn from a seeded sequence.

use std::time::Duration;

use axum::http::StatusCode;

/// Faults to inject into API calls (never into the `/_emulator/` endpoints). The rates
/// are fractions of calls (0.0 to 1.0) and add up: one draw per call picks at most one
/// ([`Faults::check`]). `dialsync emulator` sets them from its flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Added to every API answer.
    pub latency: Duration,
    /// Fraction of API calls answered 500/502/503/504 (not carried out).
    pub error_rate: f64,
    /// Fraction of API calls answered 429 with Retry-After (not carried out).
    pub throttle_rate: f64,
    /// The Retry-After of those 429 answers, in seconds.
    pub retry_after: u64,
    /// Fraction of API calls whose connection is dropped (not carried out).
    pub drop_rate: f64,
    /// Fraction of API calls carried out but never answered (the client times out): the
    /// worst case for a client that must not duplicate on retry.
    pub timeout_rate: f64,
    /// Seed of the fault draws (same seed, same requests: same faults).
    pub seed: u64,
}

/// What a draw decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    None,
    Throttle,
    Error(StatusCode),
    Drop,
    Timeout,
}

impl Faults {
    /// Why these faults cannot be drawn, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        let total = self.error_rate + self.throttle_rate + self.drop_rate + self.timeout_rate;
        if total > 1.0 {
            return Err(format!(
                "the fault rates add up to {total}; at most 1 is possible"
            ));
        }
        Ok(())
    }

    pub fn any(&self) -> bool {
        !self.latency.is_zero()
            || self.error_rate + self.throttle_rate + self.drop_rate + self.timeout_rate > 0.0
    }

    /// The fault of draw number `n`.
    pub(super) fn draw(&self, n: u64) -> Fault {
        let x = xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), self.seed);
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        let mut edge = self.throttle_rate;
        if u < edge {
            return Fault::Throttle;
        }
        edge += self.error_rate;
        if u < edge {
            const CODES: [StatusCode; 4] = [
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
            ];
            return Fault::Error(CODES[(x & 3) as usize]);
        }
        edge += self.drop_rate;
        if u < edge {
            return Fault::Drop;
        }
        edge += self.timeout_rate;
        if u < edge {
            return Fault::Timeout;
        }
        Fault::None
    }
}
