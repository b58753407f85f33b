//! Roles and what each may do with fields of each sensitivity level.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::standard::Sensitivity;

/// A user role. API tokens carry exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads reports and audiences; sees personal data masked.
    Viewer,
    /// Builds audiences and pulls data.
    Analyst,
    /// Manages the catalog, tokens and everything else.
    Admin,
}

impl Role {
    /// Every role, least privileged first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Analyst, Role::Admin];
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        })
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "analyst" => Ok(Role::Analyst),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role '{other}' (expected viewer, analyst or admin)"
            )),
        }
    }
}

/// How values of a field reach a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Refused: the column cannot be read at all.
    Denied,
    /// Hashed (SHA-256, uppercase hex), usable for matching but not readable.
    Hashed,
    /// Partly hidden (`138****5678`).
    Masked,
    /// As stored.
    Clear,
}

/// What a role may do with fields of one sensitivity level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelGrant {
    /// How query results and previews show the values.
    pub read: Visibility,
    /// Whether the field may appear in conditions and SQL filters.
    pub condition: bool,
    /// How exports show the values.
    pub export: Visibility,
    /// Whether the role may change the field's standard or its data.
    pub change: bool,
}

impl LevelGrant {
    const NOTHING: LevelGrant = LevelGrant {
        read: Visibility::Denied,
        condition: false,
        export: Visibility::Denied,
        change: false,
    };
}

/// One role's grants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolePolicy {
    /// What the role is for.
    #[serde(default)]
    pub description: String,
    /// Whether the role may manage tokens, the catalog and other people's audiences.
    #[serde(default)]
    pub manage: bool,
    /// Grants per sensitivity level; a level not listed grants nothing.
    pub levels: BTreeMap<Sensitivity, LevelGrant>,
}

/// Every role's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Roles(pub BTreeMap<Role, RolePolicy>);

impl Roles {
    /// What `role` may do with fields of `level`; nothing when undefined.
    pub fn grant(&self, role: Role, level: Sensitivity) -> LevelGrant {
        self.0
            .get(&role)
            .and_then(|p| p.levels.get(&level))
            .copied()
            .unwrap_or(LevelGrant::NOTHING)
    }

    /// Whether `role` may manage the platform.
    pub fn may_manage(&self, role: Role) -> bool {
        self.0.get(&role).is_some_and(|p| p.manage)
    }

    /// Checks that access never grows as sensitivity grows, for every role.
    pub(crate) fn check(&self) -> Result<(), String> {
        for role in Role::ALL {
            if !self.0.contains_key(&role) {
                return Err(format!("role '{role}' is not defined"));
            }
            let grants: Vec<_> = Sensitivity::ALL
                .iter()
                .map(|l| (l, self.grant(role, *l)))
                .collect();
            for pair in grants.windows(2) {
                let ((lower, a), (higher, b)) = (pair[0], pair[1]);
                if b.read > a.read || b.export > a.export || (b.condition && !a.condition) {
                    return Err(format!(
                        "role '{role}' gets more on '{higher}' fields than on '{lower}' fields"
                    ));
                }
            }
        }
        Ok(())
    }
}
