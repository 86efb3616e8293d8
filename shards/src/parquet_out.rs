//! Parquet output of `polybook export`, with the parquet crate's column writer (no Arrow: the
//! rows are a few fixed schemas, and Arrow would double the build). Times are unsigned 64-bit
//! integers; ids, sides and exact decimals are UTF-8 strings; columns are zstd-compressed.
//! Rows are buffered and written as row groups of [`ROW_GROUP_ROWS`].

use std::fs::File;
use std::sync::Arc;

use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use crate::export::{schema, ColType, RowWriter, Val, What};

/// Rows per row group: large enough for good compression, small enough to bound memory.
pub const ROW_GROUP_ROWS: usize = 128 << 10;

enum Column {
    U64(Vec<i64>),
    /// Values, and definition levels (1 present, 0 null) for optional columns.
    Str(Vec<ByteArray>, Option<Vec<i16>>),
}

pub struct ParquetWriter {
    writer: SerializedFileWriter<File>,
    columns: Vec<Column>,
    rows: usize,
}

/// The Parquet schema of a kind, in the message-type syntax.
pub fn message_type(what: What) -> String {
    let mut msg = format!("message {what:?} {{\n").to_lowercase();
    for (name, t) in schema(what) {
        msg.push_str(&match t {
            ColType::U64 => format!("  REQUIRED INT64 {name} (INTEGER(64,false));\n"),
            ColType::Str => format!("  REQUIRED BYTE_ARRAY {name} (UTF8);\n"),
            ColType::OptStr => format!("  OPTIONAL BYTE_ARRAY {name} (UTF8);\n"),
        });
    }
    msg.push('}');
    msg
}

impl ParquetWriter {
    pub fn new(file: File, what: What) -> anyhow::Result<ParquetWriter> {
        let schema_type =
            Arc::new(parquet::schema::parser::parse_message_type(&message_type(what))?);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_created_by("polybook export".to_owned())
            .build();
        let writer = SerializedFileWriter::new(file, schema_type, Arc::new(props))?;
        let columns = schema(what)
            .iter()
            .map(|(_, t)| match t {
                ColType::U64 => Column::U64(Vec::new()),
                ColType::Str => Column::Str(Vec::new(), None),
                ColType::OptStr => Column::Str(Vec::new(), Some(Vec::new())),
            })
            .collect();
        Ok(ParquetWriter { writer, columns, rows: 0 })
    }

    fn flush_group(&mut self) -> parquet::errors::Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        for column in &mut self.columns {
            let Some(mut out) = group.next_column()? else { break };
            match column {
                Column::U64(v) => {
                    out.typed::<Int64Type>().write_batch(v, None, None)?;
                    v.clear();
                }
                Column::Str(v, defs) => {
                    out.typed::<ByteArrayType>().write_batch(v, defs.as_deref(), None)?;
                    v.clear();
                    if let Some(d) = defs {
                        d.clear();
                    }
                }
            }
            out.close()?;
        }
        group.close()?;
        self.rows = 0;
        Ok(())
    }
}

fn io_error(e: parquet::errors::ParquetError) -> std::io::Error {
    std::io::Error::other(e)
}

impl RowWriter for ParquetWriter {
    fn row(&mut self, vals: &[Val<'_>]) -> std::io::Result<()> {
        if vals.len() != self.columns.len() {
            return Err(std::io::Error::other("row does not match the schema"));
        }
        for (column, v) in self.columns.iter_mut().zip(vals) {
            match (column, v) {
                // Parquet stores unsigned 64-bit integers in INT64's bits.
                (Column::U64(c), Val::U64(n)) => c.push(*n as i64),
                (Column::Str(c, defs), Val::Str(s)) => {
                    c.push(ByteArray::from(s.as_bytes().to_vec()));
                    if let Some(d) = defs {
                        d.push(1);
                    }
                }
                (Column::Str(_, Some(d)), Val::Null) => d.push(0),
                _ => return Err(std::io::Error::other("value does not match its column")),
            }
        }
        self.rows += 1;
        if self.rows >= ROW_GROUP_ROWS {
            self.flush_group().map_err(io_error)?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> anyhow::Result<()> {
        self.flush_group()?;
        self.writer.close()?;
        Ok(())
    }
}
