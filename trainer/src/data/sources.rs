//! Documents from the files `launch data prepare` reads: `.txt` (one document per file, or
//! per paragraph), `.jsonl` (one JSON object per line, the text in a named field) and
//! `.parquet` (Hugging Face datasets' format, the text in a named string column). Text and
//! JSON lines may be zstd-compressed (`.txt.zst`, `.jsonl.zst`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use parquet::basic::Type as PhysicalType;
use parquet::column::reader::ColumnReader;
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::DatasetError;

/// A file format among the inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Text,
    JsonLines,
    Parquet,
}

impl Format {
    /// The format a file's extension names, if any.
    pub(super) fn of(path: &Path) -> Option<Self> {
        let compressed = is_zstd(path);
        let named = if compressed {
            Path::new(path.file_stem()?)
        } else {
            path
        };
        match named.extension()?.to_str()? {
            "txt" | "text" | "md" => Some(Self::Text),
            "jsonl" | "ndjson" => Some(Self::JsonLines),
            "parquet" if !compressed => Some(Self::Parquet),
            _ => None,
        }
    }
}

/// What a document is in a text file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextDocuments {
    /// The whole file (a book, a web page).
    #[default]
    File,
    /// Each paragraph: text between blank lines.
    Paragraph,
}

fn is_zstd(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "zst")
}

/// `path`'s bytes, through zstd where its name ends in `.zst`.
fn reader(path: &Path) -> Result<Box<dyn Read>, DatasetError> {
    let file = File::open(path).map_err(|e| unreadable(path, e))?;
    Ok(if is_zstd(path) {
        Box::new(zstd::Decoder::new(file).map_err(|e| unreadable(path, e))?)
    } else {
        Box::new(file)
    })
}

fn unreadable(path: &Path, why: impl std::fmt::Display) -> DatasetError {
    DatasetError::Source {
        path: path.to_owned(),
        line: None,
        why: why.to_string(),
    }
}

/// The files `inputs` name, in a fixed order: a file as it is, a directory's files of known
/// formats (walked recursively, sorted), a glob pattern's matches (sorted).
pub(super) fn expand(inputs: &[String]) -> Result<Vec<PathBuf>, DatasetError> {
    let mut files = Vec::new();
    for input in inputs {
        let path = Path::new(input);
        if path.is_dir() {
            walk(path, &mut files)?;
        } else if path.exists() {
            Format::of(path).ok_or_else(|| {
                unreadable(
                    path,
                    "unknown format: use .txt, .jsonl (either may end in .zst) or .parquet files",
                )
            })?;
            files.push(path.to_owned());
        } else {
            let pattern = glob::glob(input).map_err(|e| unreadable(path, e))?;
            let mut matched = pattern
                .filter_map(Result::ok)
                .filter(|p| p.is_file() && Format::of(p).is_some())
                .collect::<Vec<_>>();
            if matched.is_empty() {
                return Err(unreadable(
                    path,
                    "no such file, and no .txt, .jsonl or .parquet file matches it as a pattern",
                ));
            }
            matched.sort();
            files.append(&mut matched);
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), DatasetError> {
    let mut entries = std::fs::read_dir(dir)
        .and_then(|d| {
            d.map(|e| e.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| unreadable(dir, e))?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, files)?;
        } else if Format::of(&path).is_some() {
            files.push(path);
        }
    }
    Ok(())
}

/// Reads `path`'s documents in order, handing them to `each` in batches of about
/// `batch_bytes` of text. `field` names the text in JSON lines and parquet rows.
pub(super) fn read(
    path: &Path,
    field: &str,
    text_documents: TextDocuments,
    batch_bytes: usize,
    each: &mut dyn FnMut(Vec<String>) -> Result<(), DatasetError>,
) -> Result<(), DatasetError> {
    let mut batch = Batcher {
        documents: Vec::new(),
        bytes: 0,
        limit: batch_bytes,
        each,
    };
    match Format::of(path).ok_or_else(|| unreadable(path, "unknown format"))? {
        Format::Text => {
            let mut bytes = Vec::new();
            reader(path)?
                .read_to_end(&mut bytes)
                .map_err(|e| unreadable(path, e))?;
            let text = String::from_utf8(bytes)
                .map_err(|e| unreadable(path, format!("not UTF-8: {}", e.utf8_error())))?;
            match text_documents {
                TextDocuments::File => batch.push(text)?,
                TextDocuments::Paragraph => {
                    for paragraph in text.replace("\r\n", "\n").split("\n\n") {
                        batch.push(paragraph.trim().to_owned())?;
                    }
                }
            }
        }
        Format::JsonLines => read_json_lines(path, field, &mut batch)?,
        Format::Parquet => read_parquet(path, field, &mut batch)?,
    }
    batch.flush()
}

struct Batcher<'a> {
    documents: Vec<String>,
    bytes: usize,
    limit: usize,
    each: &'a mut dyn FnMut(Vec<String>) -> Result<(), DatasetError>,
}

impl Batcher<'_> {
    fn push(&mut self, document: String) -> Result<(), DatasetError> {
        if document.is_empty() {
            return Ok(());
        }
        self.bytes += document.len();
        self.documents.push(document);
        if self.bytes >= self.limit {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DatasetError> {
        self.bytes = 0;
        if self.documents.is_empty() {
            return Ok(());
        }
        (self.each)(std::mem::take(&mut self.documents))
    }
}

fn read_json_lines(path: &Path, field: &str, batch: &mut Batcher) -> Result<(), DatasetError> {
    for (i, line) in BufReader::new(reader(path)?).lines().enumerate() {
        let at = |why: String| DatasetError::Source {
            path: path.to_owned(),
            line: Some(i as u64 + 1),
            why,
        };
        let line = line.map_err(|e| at(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| at(format!("not JSON: {e}")))?;
        let text = match value.get_mut(field).map(serde_json::Value::take) {
            Some(serde_json::Value::String(text)) => text,
            Some(serde_json::Value::Null) => continue,
            Some(other) => {
                return Err(at(format!(
                    "field {field:?} is {}, not a string",
                    json_kind(&other)
                )));
            }
            None => {
                return Err(at(format!(
                    "no field {field:?} (choose the text's field with --text-field)"
                )));
            }
        };
        batch.push(text)?;
    }
    Ok(())
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Rows per read from a parquet column.
const PARQUET_ROWS: usize = 1024;

fn read_parquet(path: &Path, field: &str, batch: &mut Batcher) -> Result<(), DatasetError> {
    let bad = |e: parquet::errors::ParquetError| unreadable(path, e);
    let file = File::open(path).map_err(|e| unreadable(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let columns: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
    let column = columns.iter().position(|c| c == field).ok_or_else(|| {
        unreadable(
            path,
            format!(
                "no column {field:?} (columns: {}; choose one with --text-field)",
                columns.join(", ")
            ),
        )
    })?;
    let descr = schema.column(column);
    if descr.physical_type() != PhysicalType::BYTE_ARRAY || descr.max_rep_level() > 0 {
        return Err(unreadable(
            path,
            format!("column {field:?} is not a plain string column"),
        ));
    }
    let max_def = descr.max_def_level();
    for group in 0..reader.num_row_groups() {
        let row_group = reader.get_row_group(group).map_err(bad)?;
        let ColumnReader::ByteArrayColumnReader(mut column) =
            row_group.get_column_reader(column).map_err(bad)?
        else {
            return Err(unreadable(
                path,
                format!("column {field:?} is not a string"),
            ));
        };
        let (mut values, mut levels) = (Vec::new(), Vec::new());
        loop {
            values.clear();
            levels.clear();
            let def = (max_def > 0).then_some(&mut levels);
            let (records, _, _) = column
                .read_records(PARQUET_ROWS, def, None, &mut values)
                .map_err(bad)?;
            if records == 0 {
                break;
            }
            for value in values.drain(..) {
                let text = String::from_utf8(value.data().to_vec()).map_err(|e| {
                    unreadable(
                        path,
                        format!("column {field:?} holds text that is not UTF-8: {e}"),
                    )
                })?;
                batch.push(text)?;
            }
        }
    }
    Ok(())
}
