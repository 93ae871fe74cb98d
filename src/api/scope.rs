//! What a local user may read of children's data: a caseworker reads only the consents their
//! own unit recorded or bound (the token's `unit`), unless the organisation's configuration
//! widens it; consent-admins and admins read every consent of the organisation.

use super::Actor;
use crate::config::CaseworkerScope;
use crate::jwt::Role;
use crate::node::NodeState;
use crate::storage::StoredConsent;

/// The reach of one actor's reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Every consent of the organisation.
    Organisation,
    /// Only consents recorded or bound by this unit.
    Unit(String),
    /// Nothing: a caseworker whose token names no unit.
    Nothing,
}

impl Reach {
    /// The reach of `actor` on this node.
    pub fn of(state: &NodeState, actor: &Actor) -> Reach {
        let wide = actor
            .roles
            .iter()
            .any(|role| matches!(role, Role::ConsentAdmin | Role::Admin));
        if wide || state.config.local_api.caseworker_scope == CaseworkerScope::Organisation {
            return Reach::Organisation;
        }
        match &actor.unit {
            Some(unit) => Reach::Unit(unit.clone()),
            None => Reach::Nothing,
        }
    }

    /// Whether this reach covers the consent.
    pub fn covers(&self, consent: &StoredConsent) -> bool {
        match self {
            Reach::Organisation => true,
            Reach::Unit(unit) => consent.belongs_to_unit(unit),
            Reach::Nothing => false,
        }
    }

    /// The unit to filter by, if the reach is one unit's.
    pub fn unit(&self) -> Option<&str> {
        match self {
            Reach::Unit(unit) => Some(unit),
            Reach::Organisation | Reach::Nothing => None,
        }
    }
}
