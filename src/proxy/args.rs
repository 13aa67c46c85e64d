//! The proxies' command lines, as cobra/pflag read them: `--flag=value`, `--flag value`,
//! `--bool` / `--bool=false`, flags before or after the `start` verb; list flags
//! (`--endpoints a,b`) split on commas. An unknown flag is an error, as in etcd.

/// One flag a subcommand knows: its name, whether it is a boolean (takes no argument unless
/// given as `--flag=value`), its default and its help line.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub name: &'static str,
    pub boolean: bool,
    pub default: &'static str,
    pub help: &'static str,
}

impl Spec {
    /// A flag that takes a value.
    pub const fn value(name: &'static str, default: &'static str, help: &'static str) -> Spec {
        Spec {
            name,
            boolean: false,
            default,
            help,
        }
    }

    /// A boolean switch, false unless given.
    pub const fn switch(name: &'static str, help: &'static str) -> Spec {
        Spec {
            name,
            boolean: true,
            default: "false",
            help,
        }
    }
}

/// What a command line said: the flags given (last one wins) and the positional words.
#[derive(Debug, Default)]
pub struct Args {
    flags: Vec<(String, String)>,
    pub positional: Vec<String>,
    /// `-h` / `--help` was given.
    pub help: bool,
}

/// Reads `args` against `specs`.
pub fn parse(args: &[String], specs: &[Spec]) -> Result<Args, String> {
    let mut out = Args::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let Some(body) = a
            .strip_prefix("--")
            .or_else(|| a.strip_prefix('-').filter(|f| !f.is_empty()))
        else {
            out.positional.push(a.clone());
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            out.help = true;
            continue;
        }
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            return Err(format!("unknown flag: --{name}"));
        };
        let value = if spec.boolean {
            let v = inline.unwrap_or_else(|| "true".into());
            match v.as_str() {
                "true" | "1" | "t" | "T" | "TRUE" | "True" => "true".to_string(),
                "false" | "0" | "f" | "F" | "FALSE" | "False" => "false".to_string(),
                _ => {
                    return Err(format!(
                        "invalid argument {v:?} for \"--{name}\" flag: strconv.ParseBool: \
                         parsing {v:?}: invalid syntax"
                    ))
                }
            }
        } else {
            match inline {
                Some(v) => v,
                None => {
                    let v = args
                        .get(i)
                        .ok_or_else(|| format!("flag needs an argument: --{name}"))?;
                    i += 1;
                    v.clone()
                }
            }
        };
        out.flags.push((name.to_string(), value));
    }
    Ok(out)
}

impl Args {
    /// The flag's value if given, else its default from `specs`.
    pub fn get<'a>(&'a self, specs: &'a [Spec], name: &str) -> &'a str {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .or_else(|| specs.iter().find(|s| s.name == name).map(|s| s.default))
            .unwrap_or("")
    }

    /// Whether the flag was given on the command line.
    pub fn given(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }

    /// A boolean flag.
    pub fn flag(&self, specs: &[Spec], name: &str) -> bool {
        self.get(specs, name) == "true"
    }

    /// A list flag: comma-separated, empty items dropped.
    pub fn list(&self, specs: &[Spec], name: &str) -> Vec<String> {
        self.get(specs, name)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// The flags part of a usage text: one line per flag with its default.
pub fn flags_help(specs: &[Spec]) -> String {
    let mut out = String::new();
    for s in specs {
        let left = if s.boolean {
            format!("  --{}", s.name)
        } else {
            format!("  --{} '{}'", s.name, s.default)
        };
        out.push_str(&format!("{left:<44} {}\n", s.help));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[Spec] = &[
        Spec {
            name: "endpoints",
            boolean: false,
            default: "127.0.0.1:2379",
            help: "",
        },
        Spec {
            name: "debug",
            boolean: true,
            default: "false",
            help: "",
        },
    ];

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_before_and_after_the_verb() {
        let a = parse(
            &strings(&["--endpoints=a:1,b:2", "start", "--debug"]),
            SPECS,
        )
        .unwrap();
        assert_eq!(a.positional, ["start"]);
        assert_eq!(a.list(SPECS, "endpoints"), ["a:1", "b:2"]);
        assert!(a.flag(SPECS, "debug"));
        let a = parse(
            &strings(&["start", "--endpoints", "x:1", "--debug=false"]),
            SPECS,
        )
        .unwrap();
        assert_eq!(a.get(SPECS, "endpoints"), "x:1");
        assert!(!a.flag(SPECS, "debug"));
        let a = parse(&[], SPECS).unwrap();
        assert_eq!(a.get(SPECS, "endpoints"), "127.0.0.1:2379");
        assert!(!a.given("endpoints"));
    }

    #[test]
    fn bad_command_lines_are_errors() {
        assert_eq!(
            parse(&strings(&["--nope"]), SPECS).unwrap_err(),
            "unknown flag: --nope"
        );
        assert!(parse(&strings(&["--endpoints"]), SPECS).is_err());
        assert!(parse(&strings(&["--debug=maybe"]), SPECS).is_err());
        assert!(parse(&strings(&["-h"]), SPECS).unwrap().help);
    }
}
