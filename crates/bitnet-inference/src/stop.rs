//! Stop strings over streamed text: emit text as soon as it cannot be the start of a stop
//! string, and cut the output exactly where a stop string begins.

pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

pub enum StopResult {
    /// Safe to emit; generation goes on.
    Continue(String),
    /// A stop string was found: emit this text (everything before it) and stop.
    Stop(String),
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopResult {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return StopResult::Stop(out);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let suffix = &self.pending[i..];
                if suffix.len() < s.len() && s.starts_with(suffix) {
                    hold = hold.max(suffix.len());
                    break;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopResult::Continue(out)
    }

    /// Whatever was held back, once generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for c in chunks {
            match m.push(c) {
                StopResult::Continue(s) => out.push_str(&s),
                StopResult::Stop(s) => {
                    out.push_str(&s);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stops_across_chunk_boundaries() {
        assert_eq!(
            run(&["\nUser:"], &["Hello", " there\nUs", "er: more"]),
            ("Hello there".into(), true)
        );
        assert_eq!(run(&["END"], &["a", "E", "N", "x"]), ("aENx".into(), false));
        assert_eq!(run(&[], &["abc"]), ("abc".into(), false));
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
    }
}
