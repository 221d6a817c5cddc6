//! The Sparkplug B payload messages (Eclipse Tahu `sparkplug_b.proto`,
//! package `org.eclipse.tahu.protobuf`), written by hand as prost structs.
//!
//! Why by hand: this is the "vendored generated code" of the spec's proto
//! file, so a fresh machine builds without `protoc` or a build script. Only
//! what a host application reads is declared; prost skips the rest
//! (metadata, property sets, data sets, templates, extensions) as unknown
//! fields, so such payloads still decode. Field numbers and wire types
//! follow the proto2 definition: every scalar is `optional`.

/// `Payload`: one Sparkplug message body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch, UTC.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0–255, wrapping; absent in NDEATH.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// Present in births; data messages may carry only the alias.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// A [`DataType`] number; births must carry it, data messages may omit
    /// it (the birth's applies).
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// `Payload.Metric.value`, the scalar members (17–19, data sets,
/// templates and extensions, are skipped as unknown).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    /// Int8/16/32 (two's complement in 32 bits) and UInt8/16/32.
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    /// Int64 (two's complement), UInt64 and DateTime.
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    /// String, Text and UUID.
    #[prost(string, tag = "15")]
    StringValue(String),
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
}

/// `DataType` numbers of the scalar types (the enum's wire form is a
/// `uint32` in `Metric.datatype`).
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
    pub const DATETIME: u32 = 13;
    pub const TEXT: u32 = 14;
    pub const UUID: u32 = 15;
    pub const BYTES: u32 = 17;
}
