//! What each of the lab's scenarios (the sample, a user's manifests) hands back.

/// What a scenario leaves for the common end of the lab.
pub(crate) struct Scenario {
    /// What went wrong (the lab exits non-zero after its summary).
    pub(crate) problems: Vec<String>,
    /// A command a user can run while the lab is up.
    pub(crate) try_it: String,
}
