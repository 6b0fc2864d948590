//! An event's `details`: every detail Keycloak sent, as (key, value) text pairs sorted by key.
//!
//! Why not `BTreeMap<String, String>` (which it replaces, with the same JSON and the same order): a
//! Keycloak event carries about ten details with short keys and mostly short values. The map cost a
//! tree node, two heap strings per detail and a string comparison per step to build, look up and free,
//! a sixth of the pipeline's instructions (issue #9, callgrind). Here the decoder's list is sorted
//! once and kept as one vector of [`Text`], which holds up to 24 bytes inline without an allocation
//! (every Keycloak detail key, and most values: `client-secret`, `profile email`, user names); a
//! lookup scans those few keys comparing lengths first (a binary search above 16 details).

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Short text kept inline (up to 24 bytes), longer text on the heap; reads as a `str`.
pub type Text = compact_str::CompactString;

/// Keycloak's constant detail values too long to sit inline: the token-exchange grant type and the
/// RFC 8693 token-type URNs (`keycloak-events.md` §2.3). Nearly every token-exchange event carries two
/// of them; as static text they cost no allocation, no copy and no free (the free happens on another
/// thread, which is dearer). Issue #9's note has the measurement.
const CONSTANT_VALUES: [&str; 8] = [
    "urn:ietf:params:oauth:grant-type:token-exchange",
    "urn:ietf:params:oauth:token-type:access_token",
    "urn:ietf:params:oauth:token-type:refresh_token",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:saml2",
    "urn:ietf:params:oauth:token-type:saml1",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
];

/// A detail value as [`Text`]: one of [`CONSTANT_VALUES`] as shared static text, anything else copied
/// (inline when short). The result is the same string either way; only where it lives differs.
pub fn value_text(s: &str) -> Text {
    if s.len() > 24 && s.starts_with("urn:ietf:params:oauth:") {
        if let Some(c) = CONSTANT_VALUES.iter().find(|c| **c == s) {
            return Text::const_new(c);
        }
    }
    Text::from(s)
}

/// A detail value deserialised through [`value_text`].
pub struct ValueText(pub Text);

impl<'de> Deserialize<'de> for ValueText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ValueText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ValueText, E> {
                Ok(ValueText(value_text(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Details sorted by key, each key once. Serialises as a JSON object in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Details(Vec<(Text, Text)>);

impl Details {
    pub const fn new() -> Self {
        Details(Vec::new())
    }

    /// From pairs in any order. A repeated key keeps its last value, as inserting into a map would.
    pub fn from_pairs(mut pairs: Vec<(Text, Text)>) -> Self {
        // Stable: among equal keys the later pair stays later, so "last wins" below is arrival order.
        if !pairs.is_sorted_by(|a, b| a.0 < b.0) {
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
                let mut unique: Vec<(Text, Text)> = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    match unique.last_mut() {
                        Some(last) if last.0 == k => last.1 = v,
                        _ => unique.push((k, v)),
                    }
                }
                pairs = unique;
            }
        }
        Details(pairs)
    }

    /// From pairs already sorted by key with each key once (the decoder's fast path checked both):
    /// skips the order check [`Details::from_pairs`] makes.
    pub(crate) fn from_sorted(pairs: Vec<(Text, Text)>) -> Self {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0), "details not sorted and unique");
        Details(pairs)
    }

    /// Where `key` is, or where it would go.
    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// Lookups run a dozen times per event: over the usual handful of details a scan that compares
    /// lengths first (most keys differ in length, so few byte comparisons) beats a binary search
    /// whose every step is a byte comparison.
    fn find(&self, key: &str) -> Option<&(Text, Text)> {
        if self.0.len() <= 16 {
            self.0.iter().find(|(k, _)| k.len() == key.len() && k.as_bytes() == key.as_bytes())
        } else {
            self.position(key).ok().map(|i| &self.0[i])
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key).map(|(_, v)| v.as_str())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Set `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: Text, value: Text) -> Option<Text> {
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// The pairs in key order.
    pub fn iter(&self) -> Iter<'_> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Iterator over `(key, value)` in key order.
pub type Iter<'a> = std::iter::Map<std::slice::Iter<'a, (Text, Text)>, fn(&'a (Text, Text)) -> (&'a str, &'a str)>;

impl<'a> IntoIterator for &'a Details {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<K: Into<Text>, V: Into<Text>> FromIterator<(K, V)> for Details {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Details::from_pairs(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl Serialize for Details {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k.as_str(), v.as_str())?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Details {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Details;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Details, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(8).min(256));
                while let Some((k, v)) = map.next_entry::<Text, ValueText>()? {
                    pairs.push((k, v.0));
                }
                Ok(Details::from_pairs(pairs))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn constant_values_are_static_and_equal() {
        for c in CONSTANT_VALUES {
            let t = value_text(c);
            assert_eq!(t, c);
            assert!(!t.is_heap_allocated(), "{c} was copied to the heap");
            let v: ValueText = serde_json::from_str(&serde_json::to_string(c).unwrap()).unwrap();
            assert!(!v.0.is_heap_allocated() && v.0 == c);
        }
        // Anything else is copied as it is, including near misses.
        for s in ["urn:ietf:params:oauth:token-type:access_tokenX", "URN:IETF:PARAMS:OAUTH:TOKEN-TYPE:JWT", "client-secret", ""] {
            assert_eq!(value_text(s), s);
        }
        assert!(value_text("urn:ietf:params:oauth:token-type:access_tokenX").is_heap_allocated());
    }

    proptest! {
        /// Whatever the order and repetition of keys, it behaves like the map it replaced: the same
        /// lookups, the same iteration order and the same JSON, both ways.
        #[test]
        fn behaves_like_a_btreemap(pairs in proptest::collection::vec(("[a-d]{0,3}", "[a-z\u{e9}]{0,30}"), 0..60),
                                   probes in proptest::collection::vec("[a-d]{0,3}", 0..8)) {
            let map: BTreeMap<String, String> = pairs.iter().cloned().collect();
            let details: Details = pairs.iter().cloned().collect();
            let mut inserted = Details::new();
            for (k, v) in &pairs {
                inserted.insert(k.as_str().into(), v.as_str().into());
            }
            prop_assert_eq!(&details, &inserted);
            prop_assert_eq!(details.len(), map.len());
            prop_assert!(details.iter().eq(map.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
            for p in &probes {
                prop_assert_eq!(details.get(p), map.get(p).map(String::as_str));
                prop_assert_eq!(details.contains_key(p), map.contains_key(p));
            }
            let json = serde_json::to_string(&details).unwrap();
            prop_assert_eq!(&json, &serde_json::to_string(&map).unwrap());
            let back: Details = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &details);
        }
    }

    #[test]
    fn a_repeated_key_in_json_keeps_the_last_value_as_a_map_would() {
        let d: Details = serde_json::from_str(r#"{"b":"1","a":"2","b":"3"}"#).unwrap();
        let m: BTreeMap<String, String> = serde_json::from_str(r#"{"b":"1","a":"2","b":"3"}"#).unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), serde_json::to_string(&m).unwrap());
        assert_eq!(d.get("b"), Some("3"));
        assert!(serde_json::from_str::<Details>(r#"{"a":1}"#).is_err(), "values are strings");
    }
}
