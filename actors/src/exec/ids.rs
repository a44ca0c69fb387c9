//! What a conversation id may be: 1 to 200 of `A-Z a-z 0-9 . _ : -`. Ids that start with
//! `cadre.` name the node's own conversations (`cadre.audit`, `cadre.tools`): anyone may read
//! them, only the node writes them.

use super::ExecError;

/// The prefix of the node's own conversations.
pub const SYSTEM_PREFIX: &str = "cadre.";

/// The longest conversation id.
pub const MAX_ID_LEN: usize = 200;

/// Checks the form of a conversation id given in `field`.
pub fn check_conversation_id(field: &str, id: &str) -> Result<(), ExecError> {
    if id.is_empty() {
        return Err(ExecError::Invalid(format!("{field}: missing")));
    }
    let length = id.chars().count();
    if length > MAX_ID_LEN {
        return Err(ExecError::Invalid(format!(
            "{field}: {length} characters, at most {MAX_ID_LEN}"
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:-".contains(*c)))
    {
        return Err(ExecError::Invalid(format!(
            "{field}: `{bad}` is not allowed in a conversation id (use letters, digits, `.`, `_`, \
             `:` and `-`)"
        )));
    }
    Ok(())
}

/// Checks that a caller may write to conversation `id` (given in `field`): its form, and that it
/// is not one of the node's own.
pub fn check_writable(field: &str, id: &str) -> Result<(), ExecError> {
    check_conversation_id(field, id)?;
    if id.starts_with(SYSTEM_PREFIX) {
        return Err(ExecError::PermissionDenied(format!(
            "{field}: `{id}` is a conversation of the node (`{SYSTEM_PREFIX}*`); only the node \
             writes it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_the_allowed_form_pass_and_others_name_the_field() {
        for ok in ["c1", "a.b:c_d-e", &"x".repeat(MAX_ID_LEN)] {
            assert!(check_writable("conversation_id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(MAX_ID_LEN + 1)] {
            let e = check_conversation_id("conversation_id", bad).unwrap_err();
            assert!(matches!(e, ExecError::Invalid(_)), "{bad}: {e:?}");
            assert!(e.to_string().starts_with("conversation_id: "), "{e}");
        }
    }

    #[test]
    fn the_nodes_conversations_are_readable_ids_but_not_writable() {
        assert!(check_conversation_id("conversation_id", "cadre.audit").is_ok());
        let e = check_writable("dest_conversation_id", "cadre.audit").unwrap_err();
        assert!(matches!(e, ExecError::PermissionDenied(_)), "{e:?}");
        assert!(e.to_string().starts_with("dest_conversation_id: "), "{e}");
    }
}
