//! `conclave tokenize`: text to token ids and back, with the model's own tokenizer.
use crate::engine::{self, DEFAULT_MODEL};
use anyhow::{Context, Result};

#[derive(Debug, clap::Args)]
pub struct TokenizeArgs {
    /// Text to tokenize; with --decode, token ids as a JSON array (`[1, 2, 3]`).
    pub text: String,
    /// Catalog name or path to a .gguf file.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Turn ids back into text.
    #[arg(long)]
    pub decode: bool,
    /// Treat special-token text such as `<|im_start|>` as plain text.
    #[arg(long)]
    pub no_parse_special: bool,
}

pub fn run(args: TokenizeArgs) -> Result<()> {
    let model = engine::load_tokenizer(&args.model)?;
    if args.decode {
        let ids: Vec<u32> = serde_json::from_str(&args.text)
            .context("--decode takes token ids as a JSON array, e.g. [9906, 1917]")?;
        println!("{}", model.decode(&ids, false)?);
    } else {
        let ids = model.encode(&args.text, !args.no_parse_special)?;
        println!("{}", serde_json::to_string(&ids)?);
    }
    Ok(())
}
