//! Renders arbitrary chat templates. Input: the template, then NUL-separated message contents
//! (roles alternate user/assistant). Templates come from model files, so whatever they say the
//! render must end, without panic, within its limits: rendered text of at most 1 MiB plus 4
//! times the input (chat.rs `Limits`), memory and time bounded by minijinja's fuel.
#![no_main]

use bitnet_tokenizers::{render_chat_template, ChatMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let template = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let messages: Vec<ChatMessage> = parts
        .take(8)
        .enumerate()
        .map(|(i, p)| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            ChatMessage::new(role, String::from_utf8_lossy(p))
        })
        .collect();
    let input: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
    for add_generation_prompt in [false, true] {
        if let Ok(out) = render_chat_template(
            &template,
            &messages,
            Some("<s>"),
            Some("</s>"),
            add_generation_prompt,
        ) {
            assert!(out.len() <= (1 << 20) + 4 * (input + 7), "{} bytes", out.len());
        }
    }
});
