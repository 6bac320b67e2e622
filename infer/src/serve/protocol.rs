//! The Open Inference Protocol's (KServe v2) inference request and response bodies, in JSON
//! and in the binary tensor data extension: the JSON object, then each binary tensor's bytes
//! in order, the JSON's length in the `Inference-Header-Content-Length` header (what NVIDIA's
//! `tritonclient` sends and expects by default).

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The header giving the JSON part's length in a binary request or response.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Input names the server accepts.
pub const TENSOR_INPUT: &str = "input";
pub const IMAGE_INPUT: &str = "image";
/// Output names.
pub const PROBABILITIES: &str = "probabilities";
pub const LABELS: &str = "labels";

#[derive(Debug, Deserialize)]
struct RequestJson {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Debug, Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// What a request asks to classify.
#[derive(Debug, PartialEq)]
pub enum Payload {
    /// Preprocessed images, `n × 3 × side × side` values.
    Tensor { values: Vec<f32>, n: usize },
    /// Encoded image files.
    Images(Vec<Vec<u8>>),
}

/// An output the client asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub name: String,
    pub binary: bool,
}

/// A parsed inference request.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub id: Option<String>,
    pub payload: Payload,
    /// Classes listed per image in `labels` (request parameter `top_k`, or an output's
    /// `classification` parameter as Triton's classification extension names it).
    pub top_k: usize,
    /// The outputs to return: those asked for, or all of them.
    pub outputs: Vec<Wanted>,
}

/// A request the server cannot take, with the reason (answered with 400).
#[derive(Debug, PartialEq)]
pub struct BadRequest(pub String);

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

fn flatten_numbers(v: &Value, out: &mut Vec<f32>) -> Result<(), BadRequest> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| flatten_numbers(i, out)),
        Value::Number(n) => {
            out.push(n.as_f64().ok_or_else(|| bad("a number out of range"))? as f32);
            Ok(())
        }
        _ => Err(bad("FP32 data must be numbers")),
    }
}

fn flatten_strings(v: &Value, out: &mut Vec<String>) -> Result<(), BadRequest> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| flatten_strings(i, out)),
        Value::String(s) => {
            out.push(s.clone());
            Ok(())
        }
        _ => Err(bad("BYTES data must be strings (base64-encoded image files)")),
    }
}

/// Splits binary BYTES data: each element a 4-byte little-endian length, then its bytes.
fn split_bytes(mut data: &[u8]) -> Result<Vec<Vec<u8>>, BadRequest> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let len = data.get(..4).ok_or_else(|| bad("BYTES element cut short"))?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let element = data.get(4..4 + len).ok_or_else(|| bad("BYTES element longer than the data"))?;
        out.push(element.to_vec());
        data = &data[4 + len..];
    }
    Ok(out)
}

fn usize_param(p: &Map<String, Value>, key: &str) -> Result<Option<usize>, BadRequest> {
    match p.get(key) {
        None => Ok(None),
        Some(v) => {
            v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| bad(format!("parameter '{key}' must be a whole number")))
        }
    }
}

/// Parses a request body. `json_len` is the `Inference-Header-Content-Length` header, when
/// sent; `side` the model's input size.
pub fn parse(body: &[u8], json_len: Option<usize>, side: usize) -> Result<Request, BadRequest> {
    let (json, binary) = match json_len {
        Some(n) => (body.get(..n).ok_or_else(|| bad("Inference-Header-Content-Length exceeds the body"))?, &body[n..]),
        None => (body, &body[..0]),
    };
    let req: RequestJson = serde_json::from_slice(json).map_err(|e| bad(format!("request JSON: {e}")))?;
    let [input] = req.inputs.as_slice() else {
        return Err(bad(format!(
            "{} inputs; send one: '{TENSOR_INPUT}' (FP32) or '{IMAGE_INPUT}' (BYTES)",
            req.inputs.len()
        )));
    };
    let n = usize::try_from(*input.shape.first().unwrap_or(&-1))
        .map_err(|_| bad("the input's first dimension must be the batch size"))?;
    let raw = match usize_param(&input.parameters, "binary_data_size")? {
        Some(size) => Some(binary.get(..size).ok_or_else(|| bad("binary_data_size exceeds the binary data"))?),
        None => None,
    };
    let payload = match (input.name.as_str(), input.datatype.as_str()) {
        (TENSOR_INPUT, "FP32") => tensor_payload(input, raw, n, side)?,
        (IMAGE_INPUT, "BYTES") => images_payload(input, raw, n)?,
        (name, datatype) => {
            return Err(bad(format!(
                "input '{name}' ({datatype}) is not known: send '{TENSOR_INPUT}' (FP32 [N,3,{side},{side}]) or '{IMAGE_INPUT}' (BYTES [N])"
            )))
        }
    };
    let all_binary = req.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let mut top_k = usize_param(&req.parameters, "top_k")?.unwrap_or(1);
    let mut outputs = Vec::new();
    for o in &req.outputs {
        if o.name != PROBABILITIES && o.name != LABELS {
            return Err(bad(format!("output '{}' is not known: ask for '{PROBABILITIES}' or '{LABELS}'", o.name)));
        }
        if let Some(k) = usize_param(&o.parameters, "classification")? {
            top_k = k;
        }
        let binary = o.parameters.get("binary_data").and_then(Value::as_bool).unwrap_or(all_binary);
        outputs.push(Wanted { name: o.name.clone(), binary });
    }
    if outputs.is_empty() {
        outputs = [PROBABILITIES, LABELS].map(|name| Wanted { name: name.into(), binary: all_binary }).to_vec();
    }
    Ok(Request { id: req.id, payload, top_k: top_k.max(1), outputs })
}

/// The FP32 input: already preprocessed `[n, 3, side, side]` values, binary or JSON.
fn tensor_payload(input: &InputJson, raw: Option<&[u8]>, n: usize, side: usize) -> Result<Payload, BadRequest> {
    let want = [n as i64, 3, side as i64, side as i64];
    if input.shape != want {
        return Err(bad(format!("'{TENSOR_INPUT}' has shape {:?}; {want:?} expected", input.shape)));
    }
    let values = match (raw, &input.data) {
        (Some(r), _) => {
            if r.len() % 4 != 0 {
                return Err(bad("FP32 binary data is not a whole number of floats"));
            }
            r.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        (None, Some(d)) => {
            let mut v = Vec::new();
            flatten_numbers(d, &mut v)?;
            v
        }
        (None, None) => return Err(bad("the input has no data")),
    };
    let needed = n.checked_mul(3 * side * side).ok_or_else(|| bad("the input's batch size is absurd"))?;
    if values.len() != needed {
        return Err(bad(format!("'{TENSOR_INPUT}' holds {} values; its shape needs {needed}", values.len())));
    }
    Ok(Payload::Tensor { values, n })
}

/// The BYTES input: `n` encoded image files, binary or base64 in JSON.
fn images_payload(input: &InputJson, raw: Option<&[u8]>, n: usize) -> Result<Payload, BadRequest> {
    let images = match (raw, &input.data) {
        (Some(r), _) => split_bytes(r)?,
        (None, Some(d)) => {
            let mut strings = Vec::new();
            flatten_strings(d, &mut strings)?;
            let b64 = base64::engine::general_purpose::STANDARD;
            strings
                .iter()
                .enumerate()
                .map(|(i, s)| b64.decode(s).map_err(|e| bad(format!("image {i}: not base64: {e}"))))
                .collect::<Result<_, _>>()?
        }
        (None, None) => return Err(bad("the input has no data")),
    };
    if input.shape.len() != 1 || images.len() != n {
        return Err(bad(format!("'{IMAGE_INPUT}' has shape {:?} but holds {} images", input.shape, images.len())));
    }
    Ok(Payload::Images(images))
}

/// The results of a request, ready to encode.
pub struct ResponseOutputs {
    pub n: usize,
    pub classes: usize,
    /// `n × classes`.
    pub probabilities: Vec<f32>,
    /// Best first, `top_k` per image.
    pub labels: Vec<Vec<String>>,
}

/// Encodes the response; returns the body and, for a binary response, the JSON part's length.
pub fn encode(model: &str, req: &Request, r: &ResponseOutputs) -> (Vec<u8>, Option<usize>) {
    let mut binary = Vec::new();
    let mut outputs = Vec::new();
    let k = r.labels.first().map_or(1, Vec::len);
    let label_shape = if req.top_k > 1 { json!([r.n, k]) } else { json!([r.n]) };
    for w in &req.outputs {
        let probabilities = w.name == PROBABILITIES;
        let mut o = if probabilities {
            json!({"name": w.name, "datatype": "FP32", "shape": [r.n, r.classes]})
        } else {
            json!({"name": w.name, "datatype": "BYTES", "shape": label_shape})
        };
        // Only the representation asked for is built: raw bytes, or JSON data.
        if w.binary {
            let start = binary.len();
            if probabilities {
                binary.extend(r.probabilities.iter().flat_map(|v| v.to_le_bytes()));
            } else {
                for label in r.labels.iter().flatten() {
                    binary.extend((label.len() as u32).to_le_bytes());
                    binary.extend(label.as_bytes());
                }
            }
            o["parameters"] = json!({"binary_data_size": binary.len() - start});
        } else if probabilities {
            o["data"] = json!(r.probabilities);
        } else {
            o["data"] = json!(r.labels.iter().flatten().collect::<Vec<_>>());
        }
        outputs.push(o);
    }
    let mut head = json!({"model_name": model, "model_version": "1", "outputs": outputs});
    if let Some(id) = &req.id {
        head["id"] = json!(id);
    }
    let mut body = serde_json::to_vec(&head).expect("JSON values serialise");
    if binary.is_empty() && req.outputs.iter().all(|w| !w.binary) {
        return (body, None);
    }
    let len = body.len();
    body.extend(binary);
    (body, Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_binary_requests() {
        let j = br#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","data":[[1,2,3,4],[5,6,7,8],[9,10,11,12]]}],"parameters":{"top_k":2}}"#;
        let r = parse(j, None, 2).unwrap();
        assert_eq!(r.payload, Payload::Tensor { values: (1..=12).map(|v| v as f32).collect(), n: 1 });
        assert_eq!((r.top_k, r.outputs.len()), (2, 2));
        let head = br#"{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}}],"outputs":[{"name":"labels","parameters":{"binary_data":true,"classification":3}}]}"#;
        let mut body = head.to_vec();
        body.extend([2, 0, 0, 0, b'h', b'i', 1, 0, 0, 0, b'!']);
        let r = parse(&body, Some(head.len()), 224).unwrap();
        assert_eq!(r.payload, Payload::Images(vec![b"hi".to_vec(), b"!".to_vec()]));
        assert_eq!(r.outputs, [Wanted { name: "labels".into(), binary: true }]);
        assert_eq!(r.top_k, 3);
        let b64 = br#"{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["aGk="]}]}"#;
        assert_eq!(parse(b64, None, 224).unwrap().payload, Payload::Images(vec![b"hi".to_vec()]));
    }

    #[test]
    fn bad_requests_say_why() {
        let cases: [(&[u8], &str); 6] = [
            (b"{", "request JSON"),
            (br#"{"inputs":[]}"#, "0 inputs"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#, "'x' (FP32) is not known"),
            (br#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","data":[1]}]}"#, "holds 1 values"),
            (br#"{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","data":["aGk="]}]}"#, "holds 1 images"),
            (br#"{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["aGk="]}],"outputs":[{"name":"x"}]}"#, "output 'x'"),
        ];
        for (body, expect) in cases {
            let err = parse(body, None, 2).unwrap_err().0;
            assert!(err.contains(expect), "{expect}: {err}");
        }
        assert!(parse(b"{}", Some(99), 2).unwrap_err().0.contains("exceeds the body"));
    }

    #[test]
    fn responses_in_json_and_binary() {
        let r = ResponseOutputs { n: 1, classes: 2, probabilities: vec![0.25, 0.75], labels: vec![vec!["b".into()]] };
        let req = Request {
            id: Some("7".into()),
            payload: Payload::Images(vec![]),
            top_k: 1,
            outputs: vec![
                Wanted { name: "probabilities".into(), binary: false },
                Wanted { name: "labels".into(), binary: true },
            ],
        };
        let (body, len) = encode("m", &req, &r);
        let len = len.unwrap();
        let head: Value = serde_json::from_slice(&body[..len]).unwrap();
        assert_eq!(head["id"], "7");
        assert_eq!(head["outputs"][0]["data"], json!([0.25, 0.75]));
        assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 5);
        assert_eq!(&body[len..], &[1, 0, 0, 0, b'b']);
    }

    /// Seeded mutations of valid JSON and binary requests (byte flips, truncations, numbers
    /// made extreme, header lengths that lie): each parses or is refused with a reason, never
    /// a panic.
    #[test]
    fn mutated_requests_are_refused_not_fatal() {
        let head = br#"{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}}],"outputs":[{"name":"labels","parameters":{"binary_data":true,"classification":3}}],"parameters":{"top_k":2}}"#;
        let mut binary = head.to_vec();
        binary.extend([2, 0, 0, 0, b'h', b'i', 1, 0, 0, 0, b'!']);
        let tensor = br#"{"id":"7","inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","data":[[1,2,3,4],[5,6,7,8],[9,10,11,12]]}]}"#;
        let b64 = br#"{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["aGk="]}]}"#;
        let seeds: [(&[u8], Option<usize>); 3] = [(&binary, Some(head.len())), (tensor, None), (b64, None)];
        let extremes: [&[u8]; 6] = [b"-1", b"0", b"18446744073709551615", b"9223372036854775807", b"1e308", b"\"\""];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let (seed, len) = seeds[next(3)];
            let mut body = seed.to_vec();
            let mut len = len;
            match next(5) {
                0 => {
                    let at = next(body.len());
                    body[at] ^= 1 << next(8);
                }
                1 => body.truncate(next(body.len())),
                2 => {
                    // A number in the JSON made extreme.
                    let digits: Vec<usize> = (0..body.len()).filter(|&i| body[i].is_ascii_digit()).collect();
                    let at = digits[next(digits.len())];
                    body.splice(at..=at, extremes[next(extremes.len())].iter().copied());
                }
                3 => len = Some(next(body.len() * 2)),
                _ => {
                    let at = next(body.len());
                    let chunk = body[at..(at + next(16)).min(body.len())].to_vec();
                    body.splice(at..at, chunk);
                }
            }
            let outcome = std::panic::catch_unwind(|| parse(&body, len, 2).map(drop));
            match outcome {
                Ok(Ok(())) => ok += 1,
                Ok(Err(_)) => refused += 1,
                Err(_) => panic!("parse panicked on {:?} (header length {len:?})", String::from_utf8_lossy(&body)),
            }
        }
        assert!(ok > 100 && refused > 1000, "{ok} parsed, {refused} refused");
    }
}
