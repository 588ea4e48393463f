//! The aws agent's ingress program under `tollgate bench datapath`'s harness: what one packet
//! costs there, side by side with tollgate's `to_pod`.
//!
//! `scripts/compare-aws-agent.sh` builds the object from a checkout of
//! aws-network-policy-agent (its `tc.v4ingress` program, plus an empty program for the floor)
//! and runs this example on it. The example loads the object with aya and fills its maps the
//! way `bench datapath` fills tollgate's: the pod has network policies and no cluster policy,
//! and its ingress map holds N /24 CIDR rules (10.a.b.0/24) allowing every protocol and port,
//! the client in the last. Then it runs the program through BPF_PROG_TEST_RUN on the frames
//! `bench datapath` builds:
//! - the floor: the empty program, one run per syscall and many per syscall;
//! - a new flow allowed among 1, 100 and 10,000 rules: another source port every run, one run
//!   per syscall;
//! - an established flow: the ACK of a tracked flow, many runs per syscall;
//! - a denied flow: a SYN from an address no rule allows, many runs per syscall.
//!
//! The program writes an event for every new flow and every denied packet; the script gives
//! its ring buffer 64 MiB, so that every event is written (the agent's 512 KiB would fill and
//! the rest fail, cheaply), and the example empties the ring between rounds.
//!
//! Usage: `aws_agent_datapath OBJECT [PACKETS]` (100,000 packets per case by default), as root.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf,
    maps::{HashMap, LpmTrie, RingBuf, lpm_trie::Key},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use tollgate_enforcer::{
    bench::median,
    packet::{PacketSpec, TCP_ACK},
};
use tollgate_schemas::proto;

/// The pod the packets enter, as in `bench datapath`.
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// A client no rule allows, as in `bench datapath`.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// The programs in the object.
const PROGRAM: &str = "handle_ingress";
const FLOOR: &str = "empty";
/// Rounds of the cases run many times per syscall.
const ROUNDS: u32 = 10;
/// The agent's verdicts (TC_ACT_OK, TC_ACT_SHOT).
const PASSED: i32 = 0;
const DROPPED: i32 = 2;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let object = args
        .next()
        .context("usage: aws_agent_datapath OBJECT [PACKETS]")?;
    let count: u32 = match args.next() {
        Some(count) => count.parse().context("PACKETS: not a number")?,
        None => 100_000,
    };
    let per_round = count.div_ceil(ROUNDS);
    println!(
        "{:<48} {:>10} {:>8}",
        "case (aws agent)", "median ns", "own ns"
    );

    let mut agent = Agent::load(&object, 1)?;
    let frame = syn(client(0).into(), 40_000);
    let single = median(agent.single_runs(FLOOR, count, |_| frame.clone(), -1)?);
    let repeated = median(agent.repeated_runs(FLOOR, &frame, per_round, -1)?);
    row("empty program, one run per syscall (floor)", single, single);
    row(
        "empty program, many runs per syscall (floor)",
        repeated,
        repeated,
    );

    for rules in [1, 100, 10_000] {
        let mut agent = Agent::load(&object, rules)?;
        let client = IpAddr::from(client(rules - 1));
        let runs = agent.single_runs(PROGRAM, count, |port| syn(client, port), PASSED)?;
        row(
            &format!("new flow, allowed among {rules} CIDR rules"),
            median(runs),
            single,
        );
        if rules == 1 {
            agent.run(PROGRAM, &syn(client, 40_000), 1, PASSED)?;
            let mut ack = PacketSpec::first(client, SERVER.into(), proto::TCP, 40_000, 80);
            ack.tcp_flags = TCP_ACK;
            let runs = agent.repeated_runs(PROGRAM, &ack.build(), per_round, PASSED)?;
            row("established flow", median(runs), repeated);
            let denied = syn(OUTSIDE.into(), 40_001);
            let runs = agent.repeated_runs(PROGRAM, &denied, per_round, DROPPED)?;
            row("denied flow (an event per packet)", median(runs), repeated);
        }
        if rules == 10_000 {
            let info = agent.ebpf.program(PROGRAM).context(PROGRAM)?.info()?;
            println!(
                "{PROGRAM}: {} instructions after the verifier, {} processed by it",
                info.size_translated().unwrap_or(0) / 8,
                info.verified_instruction_count().unwrap_or(0)
            );
        }
    }
    Ok(())
}

fn row(case: &str, median_ns: f64, floor_ns: f64) {
    println!("{case:<48} {median_ns:>10.0} {:>8.0}", median_ns - floor_ns);
}

/// The n-th client: host 7 of 10.a.b.0/24, as in `bench datapath`.
fn client(n: usize) -> Ipv4Addr {
    let [_, _, a, b] = (n as u32).to_be_bytes();
    Ipv4Addr::new(10, a, b, 7)
}

/// A TCP SYN from `src` to the server's port 80.
fn syn(src: IpAddr, src_port: u16) -> Vec<u8> {
    PacketSpec::first(src, SERVER.into(), proto::TCP, src_port, 80).build()
}

struct Agent {
    ebpf: Ebpf,
}

impl Agent {
    /// Loads the object and fills its maps: network policies applied, no cluster policy,
    /// `rules` /24 rules allowing every protocol and port.
    fn load(object: &str, rules: usize) -> Result<Self> {
        let mut ebpf = Ebpf::load_file(object).with_context(|| format!("loading {object}"))?;
        for name in [PROGRAM, FLOOR] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("{object} has no program {name}"))?
                .try_into()?;
            program.load().with_context(|| format!("loading {name}"))?;
        }
        let mut states: HashMap<_, u32, u8> = HashMap::try_from(
            ebpf.map_mut("ingress_pod_state_map")
                .context("pod states")?,
        )?;
        // Key 0, network policies: POLICIES_APPLIED (0); key 1, cluster policies:
        // DEFAULT_ALLOW (1).
        states.insert(0, 0, 0)?;
        states.insert(1, 1, 0)?;
        // 24 (protocol, start port, end port) rules per CIDR; the first one: any protocol
        // (254), any port.
        let mut allow_all = [0u32; 72];
        allow_all[0] = 254;
        let mut trie: LpmTrie<_, [u8; 4], [u32; 72]> =
            LpmTrie::try_from(ebpf.map_mut("ingress_map").context("ingress map")?)?;
        for n in 0..rules {
            let [a, b, c, _] = client(n).octets();
            trie.insert(&Key::new(24, [a, b, c, 0]), allow_all, 0)?;
        }
        Ok(Self { ebpf })
    }

    /// One run of `program` on `frame`, `repeat` times: the kernel's mean ns per run.
    fn run(&mut self, program: &str, frame: &[u8], repeat: u32, expect: i32) -> Result<f64> {
        let classifier: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .context(program.to_owned())?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = classifier.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })?;
        ensure!(
            result.return_value as i32 == expect,
            "{program} returned {}, not {expect}",
            result.return_value as i32
        );
        Ok(result.duration.as_nanos() as f64)
    }

    /// `count` runs, one per syscall, each on `frame(source port)` of a flow not seen before.
    fn single_runs(
        &mut self,
        program: &str,
        count: u32,
        frame: impl Fn(u16) -> Vec<u8>,
        expect: i32,
    ) -> Result<Vec<f64>> {
        let mut runs = Vec::with_capacity(count as usize);
        for i in 0..count {
            // Source ports cycle; the flows are forgotten before they would repeat.
            if i > 0 && i % 60_000 == 0 {
                self.forget_flows()?;
            }
            runs.push(self.run(program, &frame(1024 + (i % 60_000) as u16), 1, expect)?);
        }
        self.drain()?;
        Ok(runs)
    }

    /// [`ROUNDS`] rounds of `per_round` runs of `frame` in one syscall: each round's mean.
    fn repeated_runs(
        &mut self,
        program: &str,
        frame: &[u8],
        per_round: u32,
        expect: i32,
    ) -> Result<Vec<f64>> {
        let mut means = Vec::with_capacity(ROUNDS as usize);
        for _ in 0..ROUNDS {
            means.push(self.run(program, frame, per_round, expect)?);
            self.drain()?;
        }
        Ok(means)
    }

    /// Empties the ring buffer of events.
    fn drain(&mut self) -> Result<()> {
        let mut ring = RingBuf::try_from(self.ebpf.map_mut("policy_events").context("ring")?)?;
        while ring.next().is_some() {}
        Ok(())
    }

    /// Empties conntrack and the ring buffer.
    fn forget_flows(&mut self) -> Result<()> {
        self.drain()?;
        let mut conntrack: HashMap<_, [u8; 24], [u8; 16]> = HashMap::try_from(
            self.ebpf
                .map_mut("aws_conntrack_map")
                .context("conntrack")?,
        )?;
        let keys: Vec<[u8; 24]> = conntrack.keys().collect::<Result<_, _>>()?;
        for key in keys {
            conntrack.remove(&key)?;
        }
        Ok(())
    }
}
