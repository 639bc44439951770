//! The DNS wire format, as much as the proxy needs (RFC 1035): a query's header and single
//! question, an answer of A records for it, an error answer, and the A records of an
//! upstream's response. Anything it cannot read is refused, never guessed at.

use std::net::Ipv4Addr;

/// Record types and the class the proxy answers.
pub(crate) const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
pub(crate) const CLASS_IN: u16 = 1;

/// Response codes.
pub(crate) const FORMERR: u16 = 1;
pub(crate) const SERVFAIL: u16 = 2;

const HEADER: usize = 12;
const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;

/// A standard query with one question.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Query {
    pub(crate) id: u16,
    flags: u16,
    /// Lower case, without the trailing dot.
    pub(crate) name: String,
    pub(crate) qtype: u16,
    pub(crate) qclass: u16,
    /// Where the question ends in the message.
    question_end: usize,
}

/// Why a message is not a query the proxy reads.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unread {
    /// Not even a header: dropped.
    Short,
    /// A header, but not one standard query with a readable question: answered FORMERR
    /// when it is malformed, forwarded when it is another kind of message.
    Malformed(u16),
    Other,
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]))
}

/// Reads a query.
pub(crate) fn parse_query(buf: &[u8]) -> Result<Query, Unread> {
    let (Some(id), Some(flags), Some(qdcount)) = (u16_at(buf, 0), u16_at(buf, 2), u16_at(buf, 4))
    else {
        return Err(Unread::Short);
    };
    if flags & QR != 0 {
        return Err(Unread::Malformed(id));
    }
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 || qdcount != 1 {
        return Err(Unread::Other);
    }
    let (name, at) = read_name(buf, HEADER).ok_or(Unread::Malformed(id))?;
    let (Some(qtype), Some(qclass)) = (u16_at(buf, at), u16_at(buf, at + 2)) else {
        return Err(Unread::Malformed(id));
    };
    Ok(Query {
        id,
        flags,
        name,
        qtype,
        qclass,
        question_end: at + 4,
    })
}

/// Reads an uncompressed name at `at`: the name and where it ends.
fn read_name(buf: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        let len = usize::from(*buf.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // A pointer (or a reserved label type) has no place in a question.
        if len > 63 {
            return None;
        }
        let label = buf.get(at..at + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return None;
            }
            name.push(char::from(b.to_ascii_lowercase()));
        }
        if name.len() > 253 {
            return None;
        }
        at += len;
    }
    Some((name, at))
}

/// Skips a name (compressed or not) at `at`: where it ends.
fn skip_name(buf: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *buf.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l if l > 63 => return None,
            l => at += 1 + usize::from(l),
        }
    }
}

/// The header and question of an answer to `query` (from `raw`), with `rcode` and `answers`.
fn header(raw: &[u8], query: &Query, rcode: u16, answers: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(query.question_end + 16 * usize::from(answers));
    out.extend_from_slice(&query.id.to_be_bytes());
    let flags = QR | AA | (query.flags & RD) | RA | rcode;
    out.extend_from_slice(&flags.to_be_bytes());
    for count in [1, answers, 0, 0] {
        out.extend_from_slice(&u16::to_be_bytes(count));
    }
    out.extend_from_slice(&raw[HEADER..query.question_end]);
    out
}

/// The answer to `query` (read from `raw`) with `addresses`: A records for an A (or ANY)
/// question, none for another type of the same name (it exists, with no such record).
pub(crate) fn answer(raw: &[u8], query: &Query, addresses: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let records: &[Ipv4Addr] = if matches!(query.qtype, TYPE_A | TYPE_ANY) {
        addresses
    } else {
        &[]
    };
    let count = u16::try_from(records.len()).unwrap_or(u16::MAX);
    let mut out = header(raw, query, 0, count);
    for ip in records.iter().take(usize::from(count)) {
        // The name: a pointer to the question's.
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// An error answer (`FORMERR`, `SERVFAIL`) to `query`.
pub(crate) fn error(raw: &[u8], query: &Query, rcode: u16) -> Vec<u8> {
    header(raw, query, rcode, 0)
}

/// A bare error answer to a message whose question could not be read: its id only.
pub(crate) fn bare_error(id: u16, rcode: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(QR | RA | rcode).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// A query for the A records of `name`, with `id`, recursion desired.
pub(crate) fn a_query(id: u16, name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(HEADER + name.len() + 6);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&RD.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))?;
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&TYPE_A.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(out)
}

/// The response's id.
pub(crate) fn id_of(buf: &[u8]) -> Option<u16> {
    u16_at(buf, 0)
}

/// The A records of a response (with `id`, not an error), in order.
pub(crate) fn a_records(buf: &[u8], id: u16) -> Option<Vec<Ipv4Addr>> {
    let flags = u16_at(buf, 2)?;
    if u16_at(buf, 0)? != id || flags & QR == 0 || flags & 0xf != 0 {
        return None;
    }
    let (qdcount, ancount) = (u16_at(buf, 4)?, u16_at(buf, 6)?);
    let mut at = HEADER;
    for _ in 0..qdcount {
        at = skip_name(buf, at)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..ancount {
        at = skip_name(buf, at)?;
        let (rtype, rdlen) = (u16_at(buf, at)?, usize::from(u16_at(buf, at + 8)?));
        let data = buf.get(at + 10..at + 10 + rdlen)?;
        if rtype == TYPE_A
            && let Ok(octets) = <[u8; 4]>::try_from(data)
        {
            out.push(Ipv4Addr::from(octets));
        }
        at += 10 + rdlen;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_read_and_answered_with_its_question() {
        let raw = a_query(0x1234, "API.Example.test").expect("query");
        let q = parse_query(&raw).expect("parsed");
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype),
            (0x1234, "api.example.test", TYPE_A)
        );
        let ip = Ipv4Addr::new(240, 240, 1, 2);
        let reply = answer(&raw, &q, &[ip], 30);
        assert_eq!(a_records(&reply, 0x1234), Some(vec![ip]));
        // The same name, another type: no records, no error.
        let mut aaaa = raw;
        let at = aaaa.len() - 4;
        aaaa[at..at + 2].copy_from_slice(&28u16.to_be_bytes());
        let q = parse_query(&aaaa).expect("parsed");
        assert_eq!(
            a_records(&answer(&aaaa, &q, &[ip], 30), 0x1234),
            Some(vec![])
        );
        // Another id is not this query's answer.
        assert_eq!(a_records(&reply, 0x4321), None);
    }

    #[test]
    fn garbage_is_refused_not_read() {
        assert_eq!(parse_query(&[1, 2, 3]), Err(Unread::Short));
        let mut raw = a_query(7, "a.b").expect("query");
        // A response is no query.
        raw[2] |= 0x80;
        assert_eq!(parse_query(&raw), Err(Unread::Malformed(7)));
        // A label running past the end, a pointer in the question, a bad character.
        let mut cut = a_query(7, "abc.def").expect("query");
        cut.truncate(14);
        assert_eq!(parse_query(&cut), Err(Unread::Malformed(7)));
        let mut pointer = a_query(7, "abc").expect("query");
        pointer[12] = 0xc0;
        assert_eq!(parse_query(&pointer), Err(Unread::Malformed(7)));
        let mut odd = a_query(7, "abc").expect("query");
        odd[13] = b' ';
        assert_eq!(parse_query(&odd), Err(Unread::Malformed(7)));
        // Two questions, or an update: not read, forwarded.
        let mut two = a_query(7, "abc").expect("query");
        two[5] = 2;
        assert_eq!(parse_query(&two), Err(Unread::Other));
        assert!(a_query(1, &"x".repeat(64)).is_none());
        // Random bytes never panic.
        let mut seed = 0x2545_f491_u32;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = parse_query(&bytes);
            let _ = a_records(&bytes, 0);
        }
    }
}
