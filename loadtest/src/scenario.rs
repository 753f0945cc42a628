//! Scenario files (TOML) for repeatable benchmarks: a `[run]` section, optionally a
//! `[compare]` section with `[compare.a]` / `[compare.b]` overrides.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::spec::LoadSpec;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("scenario {path} is not valid: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub run: LoadSpec,
    pub compare: Option<CompareSection>,
    /// Directory of the scenario file; relative input files are resolved against it.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareSection {
    pub rounds: Option<u32>,
    #[serde(default)]
    pub a: LoadSpec,
    #[serde(default)]
    pub b: LoadSpec,
}

impl Scenario {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ScenarioError> {
        let mut s: Scenario =
            toml::from_str(text).map_err(|source| ScenarioError::Parse { path: path.to_path_buf(), source })?;
        s.base_dir = path.parent().map(Path::to_path_buf);
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// The run spec with the scenario name as default label.
    pub fn run_spec(&self) -> LoadSpec {
        let mut spec = self.run.clone();
        if spec.label.is_none() {
            spec.label = Some(self.name.clone());
        }
        spec
    }

    /// Specs for sides A and B of a comparison: each side layered over `[run]`.
    pub fn compare_specs(&self) -> Option<(LoadSpec, LoadSpec, u32)> {
        let c = self.compare.as_ref()?;
        let mut a = self.run.overlay(&c.a);
        let mut b = self.run.overlay(&c.b);
        a.label.get_or_insert_with(|| "A".into());
        b.label.get_or_insert_with(|| "B".into());
        Some((a, b, c.rounds.unwrap_or(3)))
    }
}
