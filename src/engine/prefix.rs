//! Recent prompts' and replies' keys and values, so that a job whose prompt starts like one of
//! them prefills only the rest: step k + 1 of an agent re-sends step k's prompt and reply and
//! more, turn k + 1 of a chat re-sends turn k and its answer, ensemble roles share a system
//! prompt.
//!
//! The store lives on the engine thread. Each entry is one token sequence and its keys and
//! values (a [`Prefix`]): a prompt's when it is prefilled (on the CPU views of the buffer it
//! was prefilled in, no copy), then, for a job of one sample, its prompt and reply's when the
//! reply ends (copied out of the batch), which replaces the prompt's.
//! A lookup scans every entry of the model for the longest common token prefix, which is
//! cheap at the tens of entries a memory budget of small models' prompts holds. Serving many
//! clients with long shared prefixes would want an index instead: vLLM hashes fixed-size
//! token blocks (each block's hash covers its prefix, "automatic prefix caching") and SGLang
//! keeps a radix tree of token sequences ("RadixAttention").
use crate::model::kv_cache::Prefix;
use std::sync::Arc;

/// Memory the store may keep alive, over every model of one engine.
pub const PREFIX_CACHE_BYTES: usize = 512 << 20;

/// A shorter common prefix is not worth starting from: a BOS token or a template's first
/// marker is shared by unrelated prompts and saves nothing.
const MIN_REUSE: usize = 4;

struct Entry {
    /// The engine's name for the model (its key among the loaded models).
    model: String,
    tokens: Vec<u32>,
    kv: Arc<Prefix>,
    /// When it was last stored or started from (the store's clock), for LRU eviction.
    used: u64,
}

/// Prompts' keys and values, least recently used evicted past a memory budget.
pub(crate) struct PrefixStore {
    entries: Vec<Entry>,
    budget: usize,
    clock: u64,
}

/// A job's start from the store: the first `len` positions of `kv`.
pub(crate) struct Hit {
    pub kv: Arc<Prefix>,
    pub len: usize,
}

impl PrefixStore {
    /// A store keeping at most `budget` bytes (0: keeps nothing).
    pub fn new(budget: usize) -> Self {
        Self {
            entries: Vec::new(),
            budget,
            clock: 0,
        }
    }

    /// Whether the store keeps anything at all (a budget of 0 keeps nothing).
    pub fn is_on(&self) -> bool {
        self.budget > 0
    }

    /// Bytes the entries keep alive.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.kv.bytes()).sum()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The longest stored prefix of `prompt` on `model`, leaving at least one token of the
    /// prompt to prefill (its logits give the first sampled token).
    pub fn find(&mut self, model: &str, prompt: &[u32]) -> Option<Hit> {
        let most = prompt.len().saturating_sub(1);
        let (i, len) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.model == model)
            .map(|(i, e)| (i, common(&e.tokens, prompt).min(most)))
            .max_by_key(|&(i, len)| (len, self.entries[i].used))?;
        if len < MIN_REUSE {
            return None;
        }
        self.clock += 1;
        let e = &mut self.entries[i];
        e.used = self.clock;
        Some(Hit {
            kv: e.kv.clone(),
            len,
        })
    }

    /// Keeps `tokens`' keys and values (`kv` holds exactly them). An entry that is a prefix
    /// of `tokens` is dropped (the new one serves whatever it served); if `tokens` is itself
    /// a prefix of an entry, that entry is kept instead. Then the least recently used
    /// entries go until the store fits its budget.
    pub fn insert(&mut self, model: &str, tokens: &[u32], kv: Arc<Prefix>) {
        debug_assert_eq!(kv.len(), tokens.len());
        if self.budget == 0 || kv.bytes() > self.budget {
            return;
        }
        self.clock += 1;
        let same_model = |e: &Entry| e.model == model;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| same_model(e) && e.tokens.starts_with(tokens))
        {
            e.used = self.clock;
            return;
        }
        self.entries
            .retain(|e| !(same_model(e) && tokens.starts_with(&e.tokens)));
        self.entries.push(Entry {
            model: model.to_string(),
            tokens: tokens.to_vec(),
            kv,
            used: self.clock,
        });
        while self.bytes() > self.budget {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
                .expect("a store over budget has entries");
            self.entries.swap_remove(oldest);
        }
    }
}

/// Length of the longest common prefix of `a` and `b`.
fn common(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KvCache;
    use candle_core::{Device, Tensor};

    /// A prefix of `len` positions (one layer, one KV head of width 4) and its bytes.
    fn kv(len: usize) -> Arc<Prefix> {
        let dev = Device::Cpu;
        let mut c = KvCache::new(1, 1, 1, 4, 1024, &dev).unwrap();
        let x = Tensor::zeros((1, 1, len, 4), candle_core::DType::F32, &dev).unwrap();
        c.reserve(len).unwrap();
        c.append(0, &x, &x).unwrap();
        c.advance(len);
        Arc::new(c.row_prefix().unwrap())
    }

    fn toks(range: std::ops::Range<u32>) -> Vec<u32> {
        range.collect()
    }

    /// The longest common prefix wins, one token is always left to prefill, other models'
    /// entries are not used, and a short match is no match.
    #[test]
    fn finds_the_longest_common_prefix_of_the_model() {
        let mut s = PrefixStore::new(PREFIX_CACHE_BYTES);
        s.insert("a", &toks(0..10), kv(10));
        s.insert("a", &[toks(0..6), toks(100..110)].concat(), kv(16));
        s.insert("b", &toks(0..20), kv(20));
        let hit = |s: &mut PrefixStore, m: &str, p: &[u32]| s.find(m, p).map(|h| h.len);
        assert_eq!(hit(&mut s, "a", &toks(0..30)), Some(10));
        let other = [toks(0..6), toks(100..103), vec![7]].concat();
        assert_eq!(hit(&mut s, "a", &other), Some(9));
        assert_eq!(hit(&mut s, "a", &toks(0..10)), Some(9));
        assert_eq!(hit(&mut s, "b", &toks(0..30)), Some(20));
        assert_eq!(hit(&mut s, "a", &[0, 1, 2, 50, 51]), None);
        assert_eq!(hit(&mut s, "c", &toks(0..30)), None);
    }

    /// A prompt extending a stored one replaces it; one already covered adds nothing.
    #[test]
    fn an_entry_covered_by_a_newer_one_goes() {
        let mut s = PrefixStore::new(PREFIX_CACHE_BYTES);
        s.insert("a", &toks(0..10), kv(10));
        s.insert("a", &toks(0..20), kv(20));
        assert_eq!(s.len(), 1);
        s.insert("a", &toks(0..15), kv(15));
        assert_eq!(s.len(), 1);
        assert_eq!(s.find("a", &toks(0..40)).map(|h| h.len), Some(20));
    }

    /// Past the budget the least recently used entry goes: the one neither stored nor
    /// started from since.
    #[test]
    fn the_budget_evicts_the_least_recently_used() {
        let each = kv(300).bytes();
        let mut s = PrefixStore::new(2 * each + each / 2);
        s.insert("a", &toks(0..300), kv(300));
        s.insert("a", &toks(1000..1300), kv(300));
        assert!(s.find("a", &toks(0..301)).is_some());
        s.insert("a", &toks(2000..2300), kv(300));
        assert_eq!(s.len(), 2);
        assert!(s.bytes() <= 2 * each + each / 2);
        assert!(s.find("a", &toks(0..301)).is_some(), "used last, kept");
        assert!(s.find("a", &toks(2000..2301)).is_some(), "newest, kept");
        assert!(
            s.find("a", &toks(1000..1301)).is_none(),
            "least recent, evicted"
        );
        // A budget of nothing keeps nothing.
        let mut none = PrefixStore::new(0);
        none.insert("a", &toks(0..300), kv(300));
        assert_eq!(none.len(), 0);
    }
}
