#![allow(dead_code)] // shared by several test binaries, each using a part
//! A tiny DNS server on 127.0.0.1 for the reverse-DNS tests: it answers PTR queries from a table and says
//! NXDOMAIN otherwise. Messages are built and parsed with hickory-proto (the version hickory-resolver uses,
//! through its `proto` re-export). Also a "server" that receives queries and never answers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_resolver::Name;
use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::PTR;
use hickory_resolver::proto::rr::{RData, Record, RecordType};

/// A PTR server running on its own thread until dropped.
pub struct PtrServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl PtrServer {
    /// Serves `table` (IP → PTR name, e.g. `sinkhole.example.net.`).
    pub fn start(table: &[(IpAddr, &str)]) -> PtrServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind test DNS server");
        socket.set_read_timeout(Some(Duration::from_millis(50))).expect("set read timeout");
        let addr = socket.local_addr().expect("local addr");
        let records: HashMap<Name, Name> = table
            .iter()
            .map(|(ip, name)| {
                (Name::from(*ip), Name::from_ascii(name).expect("valid PTR name in test table"))
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let thread = {
            let stop = Arc::clone(&stop);
            let queries = Arc::clone(&queries);
            std::thread::spawn(move || serve(socket, records, stop, queries))
        };
        PtrServer { addr, stop, queries, thread: Some(thread) }
    }

    /// Number of queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for PtrServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(socket: UdpSocket, records: HashMap<Name, Name>, stop: Arc<AtomicBool>, queries: Arc<AtomicUsize>) {
    let mut buffer = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let Ok((len, peer)) = socket.recv_from(&mut buffer) else { continue };
        let Ok(request) = Message::from_vec(&buffer[..len]) else { continue };
        queries.fetch_add(1, Ordering::SeqCst);
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true)
            .set_authoritative(true);
        let mut found = false;
        for query in request.queries() {
            response.add_query(query.clone());
            if query.query_type() == RecordType::PTR {
                let wanted = query.name().to_lowercase();
                if let Some(target) = records.get(&wanted) {
                    response.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::PTR(PTR(target.clone())),
                    ));
                    found = true;
                }
            }
        }
        response.set_response_code(if found { ResponseCode::NoError } else { ResponseCode::NXDomain });
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}

/// A UDP socket that accepts queries and never answers. Keep it alive for as long as it should "not answer".
pub fn silent_server() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind silent DNS server");
    let addr = socket.local_addr().expect("local addr");
    (socket, addr)
}
