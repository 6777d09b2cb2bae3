//! Tidy tables (one row per observation), built row by row and handed to polars: a
//! [`DataFrame`](polars::prelude::DataFrame) for analysis, parquet and CSV files for other tools.

use std::path::{Path, PathBuf};

use polars::prelude::{Column, CsvWriter, DataFrame, ParquetWriter, SerWriter};

use crate::error::{Error, Result};

/// One cell.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A float (NaN shows as empty in CSV).
    Float(f64),
    /// Text.
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as i64)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(x) => write!(f, "{x}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => f.write_str(s),
        }
    }
}

/// A table with named columns.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each as long as `columns`.
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(columns: &[&str]) -> Self {
        Table { columns: columns.iter().map(|c| c.to_string()).collect(), rows: Vec::new() }
    }

    /// Appends a row (as long as the columns).
    pub fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// The rows of `other` appended; `self` takes `other`'s columns when it has none yet.
    pub fn extend(&mut self, other: Table) -> Result<()> {
        if self.columns.is_empty() {
            self.columns = other.columns;
        } else if self.columns != other.columns {
            return Err(Error::Input(format!("cannot append a table with columns {:?} to one with {:?}", other.columns, self.columns)));
        }
        self.rows.extend(other.rows);
        Ok(())
    }

    /// The table as a polars `DataFrame`: a column of integers is `i64`, of numbers `f64`
    /// (integers among floats become floats), of anything else `str`.
    pub fn to_dataframe(&self) -> Result<DataFrame> {
        let columns = self
            .columns
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let cells = self.rows.iter().map(|r| r.get(j).ok_or_else(|| Error::Input(format!("a row has no cell for column `{name}`"))));
                let cells: Vec<&Value> = cells.collect::<Result<_>>()?;
                let name = name.as_str().into();
                Ok(if cells.iter().all(|v| matches!(v, Value::Int(_))) {
                    Column::new(name, cells.iter().map(|v| if let Value::Int(x) = v { *x } else { 0 }).collect::<Vec<i64>>())
                } else if cells.iter().all(|v| matches!(v, Value::Int(_) | Value::Float(_))) {
                    // NaN marks a missing value: null in parquet, an empty CSV cell.
                    let number = |v: &&Value| match v {
                        Value::Int(x) => Some(*x as f64),
                        Value::Float(x) if x.is_nan() => None,
                        Value::Float(x) => Some(*x),
                        Value::Text(_) => None,
                    };
                    Column::new(name, cells.iter().map(number).collect::<Vec<Option<f64>>>())
                } else {
                    Column::new(name, cells.iter().map(|v| v.to_string()).collect::<Vec<String>>())
                })
            })
            .collect::<Result<Vec<Column>>>()?;
        DataFrame::new_infer_height(columns).map_err(|e| Error::Table { path: PathBuf::new(), message: e.to_string() })
    }

    /// Writes `stem.parquet` and `stem.csv` (header row, comma separated, RFC 4180 quoting).
    pub fn write(&self, stem: &Path) -> Result<()> {
        let mut df = self.to_dataframe()?;
        for ext in ["parquet", "csv"] {
            let path = stem.with_extension(ext);
            let file = std::fs::File::create(&path).map_err(Error::io(&path))?;
            let written = match ext {
                "parquet" => ParquetWriter::new(file).finish(&mut df).map(|_| ()),
                _ => CsvWriter::new(file).include_header(true).finish(&mut df),
            };
            written.map_err(|e| Error::Table { path: path.clone(), message: e.to_string() })?;
        }
        Ok(())
    }
}
