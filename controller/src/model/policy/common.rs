//! Shapes shared by the policy APIs: durations, string-or-list fields, and the bookkeeping of
//! fields Weft reads but does not honour.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A field Weft knows from the API but does not act on: kept so the object is accepted, and
/// reported (never silently dropped). Its schema takes any value and is marked
/// `x-weft-unhonoured`, so the field walk knows it is noted.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct Unhonoured(pub Option<serde_yaml::Value>);

impl schemars::JsonSchema for Unhonoured {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Unhonoured".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-preserve-unknown-fields": true,
            "x-weft-unhonoured": true,
        })
    }
}

impl Unhonoured {
    /// Whether the field was given a value.
    pub fn is_set(&self) -> bool {
        self.0.as_ref().is_some_and(|v| !v.is_null())
    }
}

/// Collects what a policy asks for that Weft will not do, each naming the field.
#[derive(Debug, Default)]
pub struct Notes(pub Vec<String>);

impl Notes {
    /// Notes `field` (a path such as `spec.http[0].mirror`) if it is set.
    pub fn unhonoured(&mut self, field: &str, value: &Unhonoured, why: &str) {
        if value.is_set() {
            self.0
                .push(format!("{field}: not honoured by Weft ({why})"));
        }
    }

    /// Notes a free-form reason about `field`.
    pub fn note(&mut self, field: &str, message: impl std::fmt::Display) {
        self.0.push(format!("{field}: {message}"));
    }
}

/// A duration written as Istio, Linkerd and the Gateway API write them: `100ms`, `2s`,
/// `1.5s`, `1m`, `1h`, `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiDuration(pub Duration);

impl ApiDuration {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty duration".into());
        }
        if text == "0" {
            return Ok(Self(Duration::ZERO));
        }
        let mut total = 0f64;
        let mut rest = text;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("{text:?} has no unit (write 100ms, 2s, 1m, 1h)"))?;
            if number_len == 0 {
                return Err(format!(
                    "{text:?} is not a duration (write 100ms, 2s, 1m, 1h)"
                ));
            }
            let number: f64 = rest[..number_len]
                .parse()
                .map_err(|_| format!("{text:?} is not a duration"))?;
            rest = &rest[number_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let scale = match &rest[..unit_len] {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 1e-3,
                "us" | "µs" => 1e-6,
                "ns" => 1e-9,
                unit => {
                    return Err(format!(
                        "{text:?}: unknown unit {unit:?} (use h, m, s, ms, us, ns)"
                    ));
                }
            };
            total += number * scale;
            rest = &rest[unit_len..];
        }
        if !total.is_finite() || total > 1e9 {
            return Err(format!("{text:?} is out of range"));
        }
        Ok(Self(Duration::from_secs_f64(total)))
    }
}

impl<'de> Deserialize<'de> for ApiDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, schemars::JsonSchema)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Number(f64),
        }
        match Either::deserialize(d)? {
            Either::Text(text) => Self::parse(&text).map_err(serde::de::Error::custom),
            Either::Number(0.0) => Ok(Self(Duration::ZERO)),
            Either::Number(n) => Err(serde::de::Error::custom(format!(
                "{n} has no unit (write {n}s or {n}ms)"
            ))),
        }
    }
}

impl schemars::JsonSchema for ApiDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration: 100ms, 2s, 1.5s, 1m, 1h30m.",
        })
    }
}

impl serde::Serialize for ApiDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

/// A list that may also be written as one comma-separated string (Istio's `retryOn`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, schemars::JsonSchema)]
        #[serde(untagged)]
        enum Either {
            One(String),
            Many(Vec<String>),
        }
        Ok(Self(match Either::deserialize(d)? {
            Either::One(s) => s
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            Either::Many(v) => v,
        }))
    }
}

impl schemars::JsonSchema for StringList {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StringList".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Comma-separated values.",
        })
    }
}

/// A number that may also be written as a string (`"10"`, or a quantity such as SMI's
/// `500m`, read in thousandths).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Number(pub f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, schemars::JsonSchema)]
        #[serde(untagged)]
        enum Either {
            Num(f64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Num(n) => Ok(Self(n)),
            Either::Text(t) => {
                let t = t.trim();
                let (digits, scale) = match t.strip_suffix('m') {
                    Some(d) => (d, 1e-3),
                    None => (t, 1.0),
                };
                digits
                    .parse::<f64>()
                    .map(|n| Self(n * scale))
                    .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a number")))
            }
        }
    }
}

/// Label selector `{matchLabels: {...}}` (matchExpressions are reported, not honoured).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Labels every selected pod carries.
    #[serde(default)]
    pub match_labels: std::collections::BTreeMap<String, String>,
    /// Not honoured.
    #[serde(default)]
    pub match_expressions: Unhonoured,
}

/// `targetRef`/`targetRefs` entries (Istio 1.22+, Gateway API policy attachment).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// API group (`""` or absent for core).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (`Service`, `Gateway`).
    pub kind: String,
    pub name: String,
    /// Namespace (same as the policy's when absent).
    #[serde(default)]
    pub namespace: Option<String>,
}

impl schemars::JsonSchema for Number {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Number".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "description": "A number, or a quantity such as 500m.",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_the_apis_write_them() {
        let ms = |t: &str| ApiDuration::parse(t).map(|d| d.0.as_millis());
        assert_eq!(ms("2s"), Ok(2000));
        assert_eq!(ms("100ms"), Ok(100));
        assert_eq!(ms("1.5s"), Ok(1500));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("0"), Ok(0));
        assert!(ms("2").is_err());
        assert!(ms("2 parsecs").is_err());
        assert!(ms("").is_err());
    }
}
