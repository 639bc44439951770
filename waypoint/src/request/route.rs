//! Route selection: the first route with a matching condition (path exact/prefix/regex,
//! method, headers, query parameters, port). Regexes are compiled once per config.

use regex::Regex;
use weft_core::mesh::{NamedMatch, Route, RouteMatch, StrMatch};

/// A string condition, compiled.
pub(crate) enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Matcher {
    fn new(m: &StrMatch) -> Result<Self, String> {
        Ok(match m {
            StrMatch::Exact(v) => Self::Exact(v.clone()),
            StrMatch::Prefix(v) => Self::Prefix(v.clone()),
            StrMatch::Regex(re) => Self::Regex(
                Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("regex {re:?}: {e}"))?,
            ),
        })
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => v == value,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Regex(re) => re.is_match(value),
        }
    }
}

struct NamedCondition {
    name: String,
    matcher: Matcher,
    invert: bool,
}

impl NamedCondition {
    fn new(m: &NamedMatch) -> Result<Self, String> {
        Ok(Self {
            name: m.name.clone(),
            matcher: Matcher::new(&m.value)?,
            invert: m.invert,
        })
    }
}

/// One compiled condition.
pub(crate) struct Condition {
    path: Option<Matcher>,
    method: Option<Matcher>,
    headers: Vec<NamedCondition>,
    query: Vec<NamedCondition>,
    port: Option<u16>,
}

/// A compiled route.
pub(crate) struct CompiledRoute {
    pub(crate) route: Route,
    conditions: Vec<Condition>,
}

/// What a request is matched on.
pub(crate) struct RequestView<'a> {
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) headers: &'a http::HeaderMap,
    pub(crate) port: u16,
}

impl CompiledRoute {
    pub(crate) fn new(route: &Route) -> Result<Self, String> {
        let conditions = route
            .matches
            .iter()
            .map(|m: &RouteMatch| {
                Ok(Condition {
                    path: m.path.as_ref().map(Matcher::new).transpose()?,
                    method: m.method.as_ref().map(Matcher::new).transpose()?,
                    headers: m
                        .headers
                        .iter()
                        .map(NamedCondition::new)
                        .collect::<Result<_, _>>()?,
                    query: m
                        .query
                        .iter()
                        .map(NamedCondition::new)
                        .collect::<Result<_, _>>()?,
                    port: m.port,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            route: route.clone(),
            conditions,
        })
    }

    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        self.conditions.is_empty() || self.conditions.iter().any(|c| c.matches(req))
    }

    /// The path prefix of the first condition that matches `req`, if it matched on a prefix
    /// (what a rewrite replaces).
    pub(crate) fn matched_prefix(&self, req: &RequestView<'_>) -> Option<&str> {
        match &self.conditions.iter().find(|c| c.matches(req))?.path {
            Some(Matcher::Prefix(prefix)) => Some(prefix),
            _ => None,
        }
    }
}

impl Condition {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        if self.path.as_ref().is_some_and(|m| !m.matches(req.path)) {
            return false;
        }
        if self.method.as_ref().is_some_and(|m| !m.matches(req.method)) {
            return false;
        }
        if self.port.is_some_and(|p| p != req.port) {
            return false;
        }
        for h in &self.headers {
            let found = req
                .headers
                .get_all(h.name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| h.matcher.matches(v));
            if found == h.invert {
                return false;
            }
        }
        for q in &self.query {
            let found = req
                .query
                .unwrap_or("")
                .split('&')
                .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
                .any(|(k, v)| k == q.name && q.matcher.matches(v));
            if found == q.invert {
                return false;
            }
        }
        true
    }
}

/// The index of the first route that matches.
pub(crate) fn select(routes: &[CompiledRoute], req: &RequestView<'_>) -> Option<usize> {
    routes.iter().position(|r| r.matches(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(m: RouteMatch) -> CompiledRoute {
        CompiledRoute::new(&Route {
            name: "r".into(),
            matches: vec![m],
            backends: vec![],
            timeout_ms: None,
            retry: None,
            ..Route::default()
        })
        .expect("compiles")
    }

    #[test]
    fn header_path_method_and_query_conditions() {
        let jason = route(RouteMatch {
            headers: vec![NamedMatch {
                name: "end-user".into(),
                value: StrMatch::Exact("jason".into()),
                invert: false,
            }],
            path: Some(StrMatch::Regex("/api/.*".into())),
            method: Some(StrMatch::Exact("GET".into())),
            ..RouteMatch::default()
        });
        let mut headers = http::HeaderMap::new();
        headers.insert("end-user", "jason".parse().expect("value"));
        let view = |path, method, headers| RequestView {
            path,
            query: Some("a=1"),
            method,
            headers,
            port: 80,
        };
        assert!(jason.matches(&view("/api/list", "GET", &headers)));
        assert!(
            !jason.matches(&view("/apix", "GET", &headers)),
            "regex is anchored"
        );
        assert!(!jason.matches(&view("/api/list", "POST", &headers)));
        let none = http::HeaderMap::new();
        assert!(!jason.matches(&view("/api/list", "GET", &none)));
        let query = route(RouteMatch {
            query: vec![NamedMatch {
                name: "a".into(),
                value: StrMatch::Exact("1".into()),
                invert: false,
            }],
            ..RouteMatch::default()
        });
        assert!(query.matches(&view("/", "GET", &headers)));
    }
}
