//! drove-gateway's template functions, with Go's semantics (`strings.*`, `os.Getenv`,
//! `net.JoinHostPort`). Its `hasSuffix` tested for a prefix; this one does not.

use std::sync::Arc;

use gatehouse_model::host_port;
use gotmpl::{FuncMap, TemplateError, Value};

fn arity(name: &str, args: &[Value], expected: usize) -> Result<(), TemplateError> {
    if args.len() == expected {
        Ok(())
    } else {
        Err(TemplateError::ArgCount { name: name.to_string(), expected, got: args.len() })
    }
}

fn text<'a>(name: &str, value: &'a Value) -> Result<&'a str, TemplateError> {
    value
        .as_str()
        .ok_or_else(|| TemplateError::Exec(format!("{name}: expected a string argument, got {}", value.type_name())))
}

fn string(s: impl Into<Arc<str>>) -> Value {
    Value::String(s.into())
}

/// A function of `N` string arguments.
fn strings<const N: usize>(
    name: &'static str,
    f: impl Fn([&str; N]) -> Value + Send + Sync + 'static,
) -> (String, gotmpl::ValueFunc) {
    let func = move |args: &[Value]| {
        arity(name, args, N)?;
        let mut texts = [""; N];
        for (slot, arg) in texts.iter_mut().zip(args) {
            *slot = text(name, arg)?;
        }
        Ok(f(texts))
    };
    (name.to_string(), Arc::new(func))
}

/// `strings.Replace`: a negative `n` replaces every match.
fn replace(s: &str, old: &str, new: &str, n: i64) -> String {
    match usize::try_from(n) {
        Ok(n) => s.replacen(old, new, n),
        Err(_) => s.replace(old, new),
    }
}

/// Every function drove-gateway templates may call. `datetime` prints `now`.
pub fn functions(now: Arc<str>) -> FuncMap {
    let mut map: FuncMap = [
        strings("hasPrefix", |[s, p]| Value::Bool(s.starts_with(p))),
        strings("hasSuffix", |[s, p]| Value::Bool(s.ends_with(p))),
        strings("contains", |[s, p]| Value::Bool(s.contains(p))),
        strings("tolower", |[s]| string(s.to_lowercase())),
        strings("trim", |[s, cutset]| string(s.trim_matches(|c| cutset.contains(c)))),
        strings("getenv", |[key]| string(std::env::var(key).unwrap_or_default())),
        strings("split", |[s, sep]| {
            // Go splits an empty separator into single characters.
            let parts: Vec<Value> = if sep.is_empty() {
                s.chars().map(|c| string(c.to_string())).collect()
            } else {
                s.split(sep).map(string).collect()
            };
            Value::List(parts.into())
        }),
    ]
    .into_iter()
    .collect();
    map.insert(
        "join".into(),
        Arc::new(|args: &[Value]| {
            arity("join", args, 2)?;
            let sep = text("join", &args[1])?;
            let Value::List(items) = &args[0] else {
                return Err(TemplateError::Exec(format!("join: expected a list, got {}", args[0].type_name())));
            };
            Ok(string(items.iter().map(ToString::to_string).collect::<Vec<_>>().join(sep)))
        }),
    );
    map.insert(
        "replace".into(),
        Arc::new(|args: &[Value]| {
            arity("replace", args, 4)?;
            let n =
                args[3].as_int().ok_or_else(|| TemplateError::Exec("replace: the count must be an integer".into()))?;
            Ok(string(replace(text("replace", &args[0])?, text("replace", &args[1])?, text("replace", &args[2])?, n)))
        }),
    );
    map.insert(
        "hostport".into(),
        Arc::new(|args: &[Value]| {
            arity("hostport", args, 2)?;
            Ok(string(host_port(text("hostport", &args[0])?, &args[1])))
        }),
    );
    map.insert(
        "datetime".into(),
        Arc::new(move |args: &[Value]| {
            arity("datetime", args, 0)?;
            Ok(Value::String(now.clone()))
        }),
    );
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str) -> String {
        gotmpl::Template::new("t")
            .funcs(functions("2026-11-22 07:00:00 +0000 UTC".into()))
            .parse(src)
            .unwrap()
            .execute_to_string(&gotmpl::tmap! {})
            .unwrap()
    }

    #[test]
    fn behave_as_go_does() {
        assert_eq!(render(r#"{{hasPrefix "web.local" "web"}} {{hasSuffix "web.local" ".local"}}"#), "true true");
        assert_eq!(render(r#"{{hasSuffix "web.local" "web"}}"#), "false", "drove-gateway got this one wrong");
        assert_eq!(render(r#"{{contains "a.b" "."}} {{tolower "ÀB"}} {{trim "--a-b--" "-"}}"#), "true àb a-b");
        assert_eq!(render(r#"{{join (split "a,b,,c" ",") "|"}}"#), "a|b||c");
        assert_eq!(render(r#"{{join (split "ab" "") "."}} {{len (split "" ",")}}"#), "a.b 1");
        assert_eq!(
            render(r#"{{replace "aaa" "a" "b" 2}} {{replace "aaa" "a" "b" -1}} {{replace "ab" "" "x" -1}}"#),
            "bba bbb xaxbx"
        );
        assert_eq!(render(r#"{{hostport "10.0.0.1" 80}} {{hostport "::1" "8080"}}"#), "10.0.0.1:80 [::1]:8080");
        assert_eq!(render("{{datetime}}"), "2026-11-22 07:00:00 +0000 UTC");
        assert_eq!(render(r#"{{getenv "GATEHOUSE_SURELY_UNSET_VARIABLE"}}"#), "");
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        let t = gotmpl::Template::new("t").funcs(functions("now".into()));
        for src in [r#"{{hasPrefix "a"}}"#, r#"{{join "a" ","}}"#, r#"{{replace "a" "b" "c" "d"}}"#, "{{tolower 3}}"] {
            let parsed = t.clone().parse(src).unwrap();
            assert!(parsed.execute_to_string(&gotmpl::tmap! {}).is_err(), "{src}");
        }
    }
}
