//! Conversation history sent with a question, and its bounds.

use serde::{Deserialize, Serialize};

/// At most this many history messages are sent with a question (the newest ones).
pub const MAX_HISTORY_MESSAGES: usize = 12;
/// At most this many characters of history are sent; the oldest messages go first.
pub const MAX_HISTORY_CHARS: usize = 8000;

/// Who wrote a history message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    /// The user.
    User,
    /// The data agent.
    Assistant,
}

impl ChatRole {
    /// `"user"` or `"assistant"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// One message of `conversation_history`: `{"role": "user"|"assistant", "content": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: ChatRole,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: ChatRole::User,
            content: content.into(),
        }
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: ChatRole::Assistant,
            content: content.into(),
        }
    }
}

/// The part of `history` that is sent: the last [`MAX_HISTORY_MESSAGES`] messages, then
/// the oldest dropped until at most [`MAX_HISTORY_CHARS`] characters remain.
///
/// ```
/// use fabric_gateway::fabric::{bounded_history, ChatMessage};
///
/// let history: Vec<_> = (0..20).map(|i| ChatMessage::user(format!("q{i}"))).collect();
/// let kept = bounded_history(&history);
/// assert_eq!(kept.len(), 12);
/// assert_eq!(kept[0].content, "q8");
///
/// let long = vec![ChatMessage::user("a".repeat(5000)), ChatMessage::assistant("b".repeat(5000))];
/// assert_eq!(bounded_history(&long).len(), 1); // the older one is dropped
/// ```
pub fn bounded_history(history: &[ChatMessage]) -> &[ChatMessage] {
    let mut start = history.len().saturating_sub(MAX_HISTORY_MESSAGES);
    let mut total: usize = history[start..]
        .iter()
        .map(|m| m.content.chars().count())
        .sum();
    while total > MAX_HISTORY_CHARS && start < history.len() {
        total -= history[start].content.chars().count();
        start += 1;
    }
    &history[start..]
}

/// The messages replayed into an assistants thread: the bounded history (empty messages
/// skipped), then the question.
pub(crate) fn replay(history: &[ChatMessage], question: &str) -> Vec<ChatMessage> {
    bounded_history(history)
        .iter()
        .filter(|m| !m.content.trim().is_empty())
        .cloned()
        .chain(std::iter::once(ChatMessage::user(question)))
        .collect()
}

/// The question with the bounded history folded in (MCP has no conversation state).
pub(crate) fn fold_into_question(history: &[ChatMessage], question: &str) -> (String, usize) {
    let kept: Vec<&ChatMessage> = bounded_history(history)
        .iter()
        .filter(|m| !m.content.trim().is_empty())
        .collect();
    if kept.is_empty() {
        return (question.to_owned(), 0);
    }
    let mut text = String::from("Conversation so far:\n");
    for m in &kept {
        let who = match m.role {
            ChatRole::User => "User",
            ChatRole::Assistant => "Assistant",
        };
        text.push_str(who);
        text.push_str(": ");
        text.push_str(m.content.trim());
        text.push('\n');
    }
    text.push_str("\nCurrent question: ");
    text.push_str(question);
    (text, kept.len())
}

/// Up to 10 markdown table lines found in `text`.
pub(crate) fn table_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .take(10)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_count_then_characters() {
        let h: Vec<_> = (0..13).map(|i| ChatMessage::user(format!("{i}"))).collect();
        let kept = bounded_history(&h);
        assert_eq!(kept.len(), 12);
        assert_eq!(kept[0].content, "1");

        let h = vec![
            ChatMessage::user("x".repeat(4000)),
            ChatMessage::assistant("y".repeat(4000)),
            ChatMessage::user("z"),
        ];
        let kept = bounded_history(&h);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1].content, "z");

        // Exactly the limit is kept.
        let h = vec![ChatMessage::user("é".repeat(8000))];
        assert_eq!(bounded_history(&h).len(), 1);
        // One message longer than the limit is dropped entirely.
        let h = vec![ChatMessage::user("é".repeat(8001))];
        assert!(bounded_history(&h).is_empty());
        assert!(bounded_history(&[]).is_empty());
    }

    #[test]
    fn folding_and_replay() {
        assert_eq!(fold_into_question(&[], "q"), ("q".to_owned(), 0));
        let h = vec![
            ChatMessage::user("a"),
            ChatMessage::assistant(" "),
            ChatMessage::assistant("b"),
        ];
        let (text, n) = fold_into_question(&h, "q");
        assert_eq!(n, 2);
        assert_eq!(
            text,
            "Conversation so far:\nUser: a\nAssistant: b\n\nCurrent question: q"
        );
        let r = replay(&h, "q");
        assert_eq!(r.len(), 3);
        assert_eq!(r[2], ChatMessage::user("q"));
    }

    #[test]
    fn table_lines_are_capped() {
        let t: String = (0..15).map(|i| format!("| {i} |\n")).collect();
        let lines = table_lines(&format!("intro\n{t}outro"));
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[0], "| 0 |");
    }
}
