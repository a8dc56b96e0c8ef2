//! Every key of [`KEYS`] as a command-line flag, made from the table: `max_viewers` is
//! `--max-viewers N`, a switch is `--hflip`, a list is a repeated `--cors-origin ORIGIN`,
//! `[[stream]]` is a repeated `--stream NAME=SOURCE`; tables (`[controls]`, `[led]`,
//! `[auth]`) are file only.
//!
//! The flags fill a TOML table with the same keys the file has, which is then parsed into
//! the same [`ConfigLayer`] as the file: one parser, and the flag layer cannot hold what the
//! file could not.

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use toml::Value;

use super::keys::{Key, Kind, KEYS};
use super::{ConfigError, ConfigLayer};

/// The key flags as given on the command line; flatten it into a clap parser.
#[derive(Debug, Clone, Default)]
pub struct KeyFlags {
    /// The keys given, by their file name, as TOML values (`--stream` as given).
    given: toml::Table,
}

impl KeyFlags {
    /// A flag's value as given, e.g. `--log-level` before the configuration is resolved.
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.given.get(key.name)
    }

    /// The flags as a configuration layer. Errors name the key and the flag.
    pub fn into_layer(mut self) -> Result<ConfigLayer, ConfigError> {
        if let Some(Value::Array(items)) = self.given.remove(super::key::stream.name) {
            let mut tables = Vec::new();
            for item in items {
                let text = item.as_str().unwrap_or_default();
                let Some((name, source)) = text.split_once('=') else {
                    return Err(ConfigError::Invalid {
                        key: super::key::stream.name,
                        origin: "flag --stream".into(),
                        message: format!("{text:?} is not of the form NAME=SOURCE"),
                    });
                };
                let mut t = toml::Table::new();
                t.insert(super::key::name.name.into(), Value::String(name.into()));
                t.insert(super::key::source.name.into(), Value::String(source.into()));
                tables.push(Value::Table(t));
            }
            self.given
                .insert(super::key::stream.name.into(), Value::Array(tables));
        }
        // Every value was typed by its flag's parser above, so this cannot fail for a key of
        // the table; an error here is a bug in the table, reported like any other.
        Value::Table(self.given)
            .try_into()
            .map_err(|e| ConfigError::Invalid {
                key: "flags",
                origin: "command line".into(),
                message: e.to_string(),
            })
    }
}

/// The clap argument for a key, `None` for a file-only key.
fn arg(key: &Key) -> Option<Arg> {
    let flag = key.flag_name()?;
    let repeat = match key.kind {
        Kind::List(_) => " (repeatable; replaces the file's list)",
        _ => "",
    };
    let help = key.help.trim_end_matches('.');
    let arg = Arg::new(key.name)
        .long(flag)
        .help(format!("{help}{repeat} [{}]", key.facts()));
    Some(match key.kind {
        Kind::Str(v) => arg.value_name(v),
        Kind::Int(v, _) => arg
            .value_name(v)
            .value_parser(clap::value_parser!(i64))
            .allow_negative_numbers(true),
        Kind::Switch => arg.action(ArgAction::SetTrue),
        Kind::List(v) => arg.value_name(v).action(ArgAction::Append),
        Kind::Streams => arg.value_name("NAME=SOURCE").action(ArgAction::Append),
        Kind::Table => return None,
    })
}

impl Args for KeyFlags {
    fn augment_args(cmd: Command) -> Command {
        KEYS.iter().filter_map(arg).fold(cmd, Command::arg)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for KeyFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = toml::Table::new();
        for key in KEYS.iter().filter(|k| k.flag_name().is_some()) {
            let strings = |m: &ArgMatches| {
                m.get_many::<String>(key.name)
                    .map(|v| Value::Array(v.cloned().map(Value::String).collect()))
            };
            let value = match key.kind {
                Kind::Str(_) => m.get_one::<String>(key.name).cloned().map(Value::String),
                Kind::Int(..) => m.get_one::<i64>(key.name).copied().map(Value::Integer),
                // A switch can only be switched on; the file may set either.
                Kind::Switch => m.get_flag(key.name).then_some(Value::Boolean(true)),
                Kind::List(_) | Kind::Streams => strings(m),
                Kind::Table => None,
            };
            if let Some(v) = value {
                given.insert(key.name.to_owned(), v);
            }
        }
        Ok(KeyFlags { given })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Result<ConfigLayer, String> {
        let cmd = KeyFlags::augment_args(Command::new("picamd"));
        let m = cmd
            .try_get_matches_from(std::iter::once("picamd").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        KeyFlags::from_arg_matches(&m)
            .map_err(|e| e.to_string())?
            .into_layer()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_kind_of_flag_fills_its_key() {
        let l = flags(&[
            "--fps",
            "12",
            "--size",
            "640x480",
            "--loop",
            "--cors-origin",
            "https://a.example",
            "--cors-origin",
            "https://b.example",
            "--stream",
            "a=test",
            "--stream",
            "b=rtsp://x/s",
            "--max-requests-per-second",
            "-1",
        ])
        .unwrap();
        assert_eq!(l.fps, Some(12));
        assert_eq!(l.size.as_deref(), Some("640x480"));
        assert_eq!(l.looping, Some(true));
        assert_eq!(l.hflip, None, "an absent switch leaves the file's value");
        assert_eq!(
            l.cors_origins.unwrap(),
            ["https://a.example", "https://b.example"]
        );
        let streams = l.stream.unwrap();
        assert_eq!(streams[1].name.as_deref(), Some("b"));
        assert_eq!(streams[1].source.as_deref(), Some("rtsp://x/s"));
        // Range checks are the resolution's, so the message names the key and the origin.
        assert_eq!(l.max_requests_per_second, Some(-1));
    }

    #[test]
    fn bad_flags_are_errors_that_name_them() {
        let e = flags(&["--fps", "ten"]).unwrap_err();
        assert!(e.contains("--fps"), "{e}");
        let e = flags(&["--stream", "nameless"]).unwrap_err();
        assert!(e.contains("`stream`") && e.contains("NAME=SOURCE"), "{e}");
        let e = flags(&["--controls", "x"]).unwrap_err();
        assert!(e.contains("--controls"), "{e}");
    }

    #[test]
    fn every_key_but_the_tables_has_a_flag_named_after_it() {
        for k in KEYS {
            match (k.kind, k.flag_name()) {
                (Kind::Table, None) => {}
                // A list's flag names one item: `cors_origins` is `--cors-origin`.
                (Kind::List(_), Some(f)) => {
                    let plural = k.name.replace('_', "-");
                    let one = match plural.strip_suffix("ies") {
                        Some(stem) => format!("{stem}y"),
                        None => plural.trim_end_matches('s').to_owned(),
                    };
                    assert_eq!(f, one)
                }
                (_, Some(f)) => assert_eq!(f, k.name.replace('_', "-")),
                (_, None) => panic!("{} has no flag", k.name),
            }
        }
    }
}
