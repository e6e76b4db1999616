//! A drove-gateway template file, parsed once per (re)load with its delimiters and
//! functions, rendered against [`RenderingData`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::data::RenderingData;
use crate::funcs::functions;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read the template {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("template {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("template {} failed to render: {message}", path.display())]
    Render { path: PathBuf, message: String },
}

/// A parsed template. Parsing again (on reload) picks up edits, which drove-gateway never did.
pub struct Template {
    path: PathBuf,
    source: String,
    left: String,
    right: String,
}

impl Template {
    /// Reads and parses `path`; a syntax error names the file, line and column.
    pub fn load(path: &Path, left: &str, right: &str) -> Result<Self, TemplateError> {
        let source =
            std::fs::read_to_string(path).map_err(|source| TemplateError::Read { path: path.into(), source })?;
        let template = Template { path: path.into(), source, left: left.into(), right: right.into() };
        template.parsed("")?;
        Ok(template)
    }

    fn parsed(&self, now: &str) -> Result<gotmpl::Template, TemplateError> {
        let name = self.path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        gotmpl::Template::new(&name)
            .delims(&self.left, &self.right)
            .funcs(functions(Arc::from(now)))
            .parse(&self.source)
            .map_err(|e| TemplateError::Parse { path: self.path.clone(), message: e.to_string() })
    }

    /// Renders `data`; `{{datetime}}` prints `now`.
    pub fn render(&self, data: &RenderingData, now: &str) -> Result<String, TemplateError> {
        let failed = |message: String| TemplateError::Render { path: self.path.clone(), message };
        let value = gotmpl::to_value(data).map_err(|e| failed(e.to_string()))?;
        self.parsed(now)?.execute_to_string(&value).map_err(|e| failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{AppData, HostData};

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("nginx.tmpl");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn renders_with_custom_delimiters_and_reports_positions() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = RenderingData { xproxy: "edge-1".into(), ..Default::default() };
        data.add_app(AppData {
            id: "a.local".into(),
            vhost: "a.local".into(),
            hosts: vec![HostData { host: "10.0.0.1".into(), port: 31000, port_type: "http".into() }],
            ..Default::default()
        });
        let path = write(
            dir.path(),
            "# {{datetime}}\n[[range $v, $app := .Apps]]upstream [[$v]] {[[range $app.Hosts]] server [[hostport .Host .Port]];[[end]] }[[end]] # [[.Xproxy]]\n",
        );
        let out = Template::load(&path, "[[", "]]").unwrap().render(&data, "then").unwrap();
        assert_eq!(out, "# {{datetime}}\nupstream a.local { server 10.0.0.1:31000; } # edge-1\n");

        let path = write(dir.path(), "line one\n{{range .Apps}}\n{{if}}\n");
        let err = Template::load(&path, "{{", "}}").err().unwrap().to_string();
        assert!(err.contains("nginx.tmpl") && err.contains(":3:"), "{err}");
        let path = write(dir.path(), "{{.Apps.nope.Vhost | tolower}}");
        assert!(Template::load(&path, "{{", "}}").unwrap().render(&data, "").is_err());
        let missing = Template::load(&dir.path().join("none.tmpl"), "{{", "}}").err().unwrap().to_string();
        assert!(missing.starts_with("cannot read the template"), "{missing}");
    }
}
