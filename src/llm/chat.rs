//! Chat prompts. ChatML (`<|im_start|>role\n…<|im_end|>\n`) is what SmolLM2 and Qwen2.5 use;
//! the GGUF's `tokenizer.chat_template` says whether a model speaks it and may carry a default
//! system prompt, which we honour as the template would.

/// Whether a Jinja chat template is ChatML.
pub fn is_chatml(template: &str) -> bool {
    template.contains("<|im_start|>")
}

/// The literal default system prompt a ChatML template inserts when the conversation has none
/// (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face").
pub fn default_system(template: &str) -> Option<&str> {
    let start = template.find("<|im_start|>system\n")? + "<|im_start|>system\n".len();
    let len = template[start..].find("<|im_end|>")?;
    let text = &template[start..start + len];
    (!text.contains(['{', '}'])).then_some(text)
}

/// One user turn, ready for the assistant's answer.
pub fn chatml(system: Option<&str>, user: &str) -> String {
    let mut s = String::with_capacity(user.len() + 96);
    if let Some(sys) = system {
        s.push_str("<|im_start|>system\n");
        s.push_str(sys);
        s.push_str("<|im_end|>\n");
    }
    s.push_str("<|im_start|>user\n");
    s.push_str(user);
    s.push_str("<|im_end|>\n<|im_start|>assistant\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_template_default_system_and_layout() {
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        assert!(is_chatml(t));
        assert_eq!(
            default_system(t),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(
            default_system("<|im_start|>system\n{{ x }}<|im_end|>"),
            None
        );
        assert_eq!(chatml(Some("S"), "hi"), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }
}
