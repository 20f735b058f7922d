//! Run with: `cargo build --release --target wasm32-wasip2 -p text_stats`,
//! then `work-engine register target/wasm32-wasip2/release/text_stats.wasm`
//! and `work-engine call text_stats --args '{"text": "a b a"}'`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use work_guest_sdk::{ToolError, tool};

#[derive(Deserialize, JsonSchema)]
struct Args {
    /// The text to measure.
    text: String,
}

#[derive(Serialize, JsonSchema)]
struct Stats {
    /// Unicode scalar values.
    characters: usize,
    /// Runs of non-whitespace.
    words: usize,
    /// Lines, counting a last line without a newline.
    lines: usize,
    /// The five most frequent words (lower-cased), most frequent first;
    /// ties in alphabetical order.
    top_words: Vec<WordCount>,
}

#[derive(Serialize, JsonSchema)]
struct WordCount {
    word: String,
    count: usize,
}

tool! {
    /// Counts characters, words and lines of a text and finds its five most
    /// frequent words.
    fn text_stats(args: Args) -> Result<Stats, ToolError> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for word in args.text.split_whitespace() {
            let word = word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
            if !word.is_empty() {
                *counts.entry(word).or_default() += 1;
            }
        }
        let mut top_words: Vec<WordCount> =
            counts.into_iter().map(|(word, count)| WordCount { word, count }).collect();
        top_words.sort_by(|x, y| y.count.cmp(&x.count).then_with(|| x.word.cmp(&y.word)));
        top_words.truncate(5);
        Ok(Stats {
            characters: args.text.chars().count(),
            words: args.text.split_whitespace().count(),
            lines: args.text.lines().count(),
            top_words,
        })
    }
}
