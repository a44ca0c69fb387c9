//! Skills as supervised actors (kind `skill`).
//!
//! A skill is a folder with a `SKILL.md` — YAML front matter with `name` and `description`,
//! then the instructions — and any resources beside it. Starting a `skill` child reads the
//! folder and adds the skill to the node's [`SkillRegistry`]; stopping it takes the skill away.
//! Agents see the list (the `skills.list_skills` tool) and load one with `skills.activate_skill`
//! (see [`crate::builtin`]), which returns the instructions and copies the folder into the
//! caller's workspace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::child::{ChildSpec, StartContext, StartError, StartFuture, Started};
use crate::spec::ActorKind;

/// What a `skill` child loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillSpec {
    /// The skill's folder (holding `SKILL.md`).
    pub path: PathBuf,
}

/// A loaded skill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skill {
    /// Its name (front matter `name`), unique on the node.
    pub name: String,
    /// What it is for (front matter `description`).
    pub description: String,
    /// The body of `SKILL.md` after the front matter.
    pub instructions: String,
    /// The skill's folder.
    pub dir: PathBuf,
    /// Its files, relative to `dir` (`SKILL.md` included), in order.
    pub files: Vec<PathBuf>,
    /// The path of the actor that holds it.
    pub server: String,
}

/// The node's skills by name; cheap to clone.
#[derive(Clone, Default)]
pub struct SkillRegistry {
    inner: Arc<RwLock<BTreeMap<String, Skill>>>,
}

/// Why a skill folder cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", if *line > 0 { format!(":{line}") } else { String::new() })]
pub struct SkillError {
    /// The `SKILL.md` path.
    pub file: String,
    /// The line at fault, from 1 (0 when the error is not at a line).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Most bytes a skill's files may hold: they are copied into workspaces.
const MAX_SKILL_BYTES: u64 = 16 << 20;

impl SkillRegistry {
    /// All loaded skills, sorted by name.
    pub fn list(&self) -> Vec<Skill> {
        self.inner
            .read()
            .expect("skills")
            .values()
            .cloned()
            .collect()
    }

    /// The loaded skill called `name`, if any.
    pub fn get(&self, name: &str) -> Option<Skill> {
        self.inner.read().expect("skills").get(name).cloned()
    }

    fn add(&self, skill: Skill) -> Result<(), String> {
        let mut skills = self.inner.write().expect("skills");
        if let Some(other) = skills.get(&skill.name) {
            return Err(format!(
                "skill `{}` is already held by `{}`",
                skill.name, other.server
            ));
        }
        tracing::info!(skill = %skill.name, server = %skill.server, "skill added");
        skills.insert(skill.name.clone(), skill);
        Ok(())
    }

    fn remove(&self, name: &str, server: &str) {
        let mut skills = self.inner.write().expect("skills");
        if skills.get(name).is_some_and(|s| s.server == server) {
            skills.remove(name);
            tracing::info!(skill = %name, "skill removed");
        }
    }
}

/// A `skill` child: a permanent worker that loads the folder at each start.
pub fn skill_child(id: impl Into<String>, spec: SkillSpec, skills: SkillRegistry) -> ChildSpec {
    let start = move |ctx: StartContext| -> StartFuture {
        let (spec, skills) = (spec.clone(), skills.clone());
        Box::pin(async move {
            let dir = spec.path.clone();
            let path = ctx.path.clone();
            let skill = tokio::task::spawn_blocking(move || load(&dir, &path))
                .await
                .map_err(|e| StartError(e.to_string()))?
                .map_err(|e| StartError(e.to_string()))?;
            let name = skill.name.clone();
            skills.add(skill).map_err(StartError)?;
            let held = Held {
                skills,
                name,
                server: ctx.path.clone(),
            };
            let (actor, _) = Actor::spawn_linked(None, SkillActor, held, ctx.supervisor)
                .await
                .map_err(|e| StartError(e.to_string()))?;
            Ok(Started::actor(actor.get_cell()))
        })
    };
    ChildSpec::worker(id, ActorKind::Skill, start)
}

/// Reads a skill folder.
pub fn load(dir: &Path, server: &str) -> Result<Skill, SkillError> {
    let file = dir.join("SKILL.md");
    let at = |line: usize, message: String| SkillError {
        file: file.display().to_string(),
        line,
        message,
    };
    let text = std::fs::read_to_string(&file).map_err(|e| {
        at(
            0,
            match e.kind() {
                std::io::ErrorKind::NotFound => "not found".into(),
                _ => format!("cannot read: {e}"),
            },
        )
    })?;
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
        .ok_or_else(|| at(1, "must start with `---` and YAML front matter".into()))?;
    let end = rest
        .find("\n---")
        .ok_or_else(|| at(1, "the front matter has no closing `---`".into()))?;
    let (front, body) = (&rest[..end], &rest[end + 4..]);
    let node =
        marked_yaml::parse_yaml(0, front).map_err(|e| at(2, format!("front matter: {e}")))?;
    let field = |key: &str| -> Result<String, SkillError> {
        let value = node
            .as_mapping()
            .and_then(|m| m.get_scalar(key))
            .map(|s| s.as_str().trim().to_string())
            .filter(|s| !s.is_empty());
        value.ok_or_else(|| at(2, format!("front matter needs a non-empty `{key}`")))
    };
    let name = field("name")?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(at(
            2,
            format!("name `{name}` must use only letters, digits, `-`, `_` and `.`"),
        ));
    }
    let description = field("description")?;
    let mut files = Vec::new();
    let mut bytes = 0;
    walk(dir, Path::new(""), &mut files, &mut bytes).map_err(|e| at(0, e.to_string()))?;
    if bytes > MAX_SKILL_BYTES {
        return Err(at(
            0,
            format!("the skill's files hold {bytes} bytes, more than {MAX_SKILL_BYTES}"),
        ));
    }
    files.sort();
    Ok(Skill {
        name,
        description,
        instructions: body.trim_start_matches(['\r', '\n']).to_string(),
        dir: dir.to_path_buf(),
        files,
        server: server.to_string(),
    })
}

fn walk(dir: &Path, rel: &Path, files: &mut Vec<PathBuf>, bytes: &mut u64) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir.join(rel))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = rel.join(entry.file_name());
        if kind.is_dir() {
            walk(dir, &path, files, bytes)?;
        } else if kind.is_file() {
            *bytes += entry.metadata()?.len();
            files.push(path);
        }
    }
    Ok(())
}

/// The actor that holds one skill in the registry.
struct SkillActor;

struct Held {
    skills: SkillRegistry,
    name: String,
    server: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.skills.remove(&self.name, &self.server);
    }
}

impl Actor for SkillActor {
    type Msg = ();
    type State = Held;
    type Arguments = Held;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        held: Held,
    ) -> Result<Held, ActorProcessingErr> {
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skill_folder_is_read_and_bad_ones_are_refused_with_the_line() {
        let dir = std::env::temp_dir().join(format!("cadre-skill-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("scripts")).unwrap();
        std::fs::write(
            dir.join("SKILL.md"),
            "---\nname: tidy\ndescription: Keeps things tidy.\n---\n\nRun scripts/tidy.sh.\n",
        )
        .unwrap();
        std::fs::write(dir.join("scripts/tidy.sh"), "echo tidy\n").unwrap();
        let skill = load(&dir, "root/skills/tidy").unwrap();
        assert_eq!(skill.name, "tidy");
        assert_eq!(skill.description, "Keeps things tidy.");
        assert_eq!(skill.instructions, "Run scripts/tidy.sh.\n");
        assert_eq!(
            skill.files,
            [PathBuf::from("SKILL.md"), PathBuf::from("scripts/tidy.sh")]
        );

        std::fs::write(dir.join("SKILL.md"), "---\nname: tidy\n---\nbody\n").unwrap();
        let err = load(&dir, "x").unwrap_err().to_string();
        assert!(
            err.ends_with("SKILL.md:2: front matter needs a non-empty `description`"),
            "{err}"
        );
        std::fs::write(dir.join("SKILL.md"), "no front matter\n").unwrap();
        let err = load(&dir, "x").unwrap_err().to_string();
        assert!(
            err.ends_with("SKILL.md:1: must start with `---` and YAML front matter"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let err = load(&dir, "x").unwrap_err().to_string();
        assert!(err.ends_with("SKILL.md: not found"), "{err}");
    }
}
