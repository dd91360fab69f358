//! A unit's rendered objects packed while the unit waits for a sync slot: a round renders every
//! unit before it syncs the first, and a thousand units may wait at once. Packed, a unit's
//! objects take one zlib buffer (deflate with a checksum; objects of one app share most of their
//! text: labels, annotations, the shape of a Deployment) instead of a few allocations each.

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use super::hook::{Hook, Phase};
use super::{Body, Object, ObjectKey, Scope};

/// See the module's documentation.
#[derive(Debug)]
pub struct Packed {
    bytes: Box<[u8]>,
    count: usize,
}

impl Packed {
    /// Packs `objects` (their order is kept).
    pub fn of(objects: Vec<Object>) -> Packed {
        let count = objects.len();
        let mut out = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut buf = Vec::new();
        for o in objects {
            buf.clear();
            encode(&o, &mut buf);
            // Writing to a vector does not fail.
            let _ = out.write_all(&buf);
        }
        let bytes = out.finish().unwrap_or_default().into_boxed_slice();
        Packed { bytes, count }
    }

    /// The objects again, in their order. An error only if the buffer was damaged in memory.
    pub fn objects(&self) -> Result<Vec<Object>, String> {
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&self.bytes[..])
            .read_to_end(&mut raw)
            .map_err(|e| format!("packed objects: {e}"))?;
        let mut r = Reader { raw: &raw, at: 0 };
        let mut objects = Vec::with_capacity(self.count);
        // Consecutive objects of one file share its name, as they did when rendered.
        let mut file: Arc<str> = Arc::from("");
        for _ in 0..self.count {
            objects.push(r.object(&mut file).ok_or("packed objects: damaged")?);
        }
        if r.at != raw.len() {
            return Err("packed objects: damaged".into());
        }
        Ok(objects)
    }
}

fn encode(o: &Object, out: &mut Vec<u8>) {
    let text = |out: &mut Vec<u8>, s: &str| {
        // A render's strings are far below 4 GiB (bounded by the checkout's and Helm's limits).
        debug_assert!(u32::try_from(s.len()).is_ok());
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    let maybe = |out: &mut Vec<u8>, s: Option<&str>| match s {
        Some(s) => {
            out.push(1);
            text(out, s);
        }
        None => out.push(0),
    };
    text(out, &o.key.group);
    text(out, &o.key.kind);
    maybe(out, o.key.namespace.as_deref());
    text(out, &o.key.name);
    text(out, &o.api_version);
    out.push(match o.scope {
        Scope::Namespaced => 0,
        Scope::Cluster => 1,
        Scope::Unknown => 2,
    });
    text(out, o.body.text());
    text(out, &o.hash);
    text(out, &o.file);
    out.extend_from_slice(&o.line.to_le_bytes());
    maybe(out, o.refused.as_deref());
    match &o.hook {
        None => out.push(0),
        Some(h) => {
            out.push(1);
            out.push(match h.phase {
                Phase::Pre => 0,
                Phase::Post => 1,
            });
            out.extend_from_slice(&h.weight.to_le_bytes());
            out.push(
                u8::from(h.before_creation)
                    | u8::from(h.on_success) << 1
                    | u8::from(h.on_failure) << 2,
            );
        }
    }
}

struct Reader<'a> {
    raw: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let b = self.raw.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(b)
    }
    fn byte(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.bytes(n)?).ok()
    }
    fn text(&mut self) -> Option<String> {
        self.str().map(str::to_string)
    }
    fn maybe(&mut self) -> Option<Option<String>> {
        match self.byte()? {
            0 => Some(None),
            1 => self.text().map(Some),
            _ => None,
        }
    }

    fn object(&mut self, file: &mut Arc<str>) -> Option<Object> {
        let key = ObjectKey {
            group: self.text()?,
            kind: self.text()?,
            namespace: self.maybe()?,
            name: self.text()?,
        };
        let api_version = self.text()?;
        let scope = match self.byte()? {
            0 => Scope::Namespaced,
            1 => Scope::Cluster,
            2 => Scope::Unknown,
            _ => return None,
        };
        let body = Body::from_text(self.str()?);
        let hash = self.text()?;
        let name = self.str()?;
        if &**file != name {
            *file = Arc::from(name);
        }
        let line = self.u32()?;
        let refused = self.maybe()?;
        let hook = match self.byte()? {
            0 => None,
            1 => {
                let phase = match self.byte()? {
                    0 => Phase::Pre,
                    1 => Phase::Post,
                    _ => return None,
                };
                let weight = i32::from_le_bytes(self.bytes(4)?.try_into().ok()?);
                let flags = self.byte()?;
                if flags > 7 {
                    return None;
                }
                Some(Hook {
                    phase,
                    weight,
                    before_creation: flags & 1 != 0,
                    on_success: flags & 2 != 0,
                    on_failure: flags & 4 != 0,
                })
            }
            _ => return None,
        };
        Some(Object {
            key,
            api_version,
            scope,
            body,
            hash,
            file: file.clone(),
            line,
            refused,
            hook,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, ns: Option<&str>, hook: Option<Hook>, file: &str) -> Object {
        let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns}, "data": {"k": "é ✓", "n": 1.5e-7}});
        Object {
            key: ObjectKey {
                group: String::new(),
                kind: "ConfigMap".into(),
                namespace: ns.map(str::to_string),
                name: name.into(),
            },
            api_version: "v1".into(),
            scope: if ns.is_some() {
                Scope::Namespaced
            } else {
                Scope::Unknown
            },
            body: Body::of(&body),
            hash: super::super::hash(&body),
            file: Arc::from(file),
            line: 7,
            refused: ns
                .is_none()
                .then(|| "outside the tenant's namespaces".to_string()),
            hook,
        }
    }

    #[test]
    fn packed_objects_come_back_as_they_were() {
        let hook = Hook {
            phase: Phase::Post,
            weight: -3,
            before_creation: true,
            on_success: false,
            on_failure: true,
        };
        let objects = vec![
            object("a", Some("team"), None, "apps/a.yaml"),
            object("b", None, Some(hook), "apps/a.yaml"),
            object("c", Some("other"), None, "apps/b.yaml (kustomize output)"),
        ];
        let packed = Packed::of(objects.clone());
        let back = packed.objects().unwrap();
        assert_eq!(back, objects);
        // One file's objects share its name again.
        assert!(Arc::ptr_eq(&back[0].file, &back[1].file));
        assert!(Packed::of(Vec::new()).objects().unwrap().is_empty());
    }

    #[test]
    fn a_damaged_pack_is_an_error_not_a_panic() {
        let mut packed = Packed::of(vec![object("a", Some("team"), None, "a.yaml")]);
        packed.count = 2;
        assert!(packed.objects().is_err());
        packed.bytes = vec![1, 2, 3].into_boxed_slice();
        assert!(packed.objects().is_err());
        // A flipped byte inside a valid stream fails its checksum.
        let good = Packed::of(vec![object("a", Some("team"), None, "a.yaml")]);
        let mut bytes = good.bytes.to_vec();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        let damaged = Packed {
            bytes: bytes.into_boxed_slice(),
            count: 1,
        };
        assert!(damaged.objects().is_err());
    }
}
