//! Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI finds its CPUs,
//! IOAPIC and ISA interrupt routing.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, IOAPIC_START};

/// The tables must fit in the 1 KiB EBDA window Linux scans; 32 CPUs leave room to spare.
pub const MAX_CPUS: u8 = 32;
/// Interrupt pins of the in-kernel IOAPIC.
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REV: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// CPUID family 6 signature and the FPU + APIC feature flags, as real firmware reports them.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

#[derive(Debug, Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit in an MP table (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    #[error("guest memory too small for the MP table at {EBDA_START:#x}")]
    NoMemory,
}

/// Little-endian byte builder for table entries.
struct Table(Vec<u8>);

impl Table {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// Two's-complement checksum byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer plus configuration table, to be placed at `base`.
pub fn build(base: u64, num_cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let mut entries = Table(Vec::new());
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries
            .u8(ENTRY_PROCESSOR)
            .u8(cpu)
            .u8(APIC_VERSION)
            .u8(flags)
            .u32(CPU_SIGNATURE)
            .u32(CPU_FEATURES)
            .u32(0)
            .u32(0);
        count += 1;
    }
    entries.u8(ENTRY_BUS).u8(0).bytes(b"ISA   ");
    entries
        .u8(ENTRY_IOAPIC)
        .u8(ioapic_id)
        .u8(IOAPIC_VERSION)
        .u8(1)
        .u32(IOAPIC_START as u32);
    count += 2;
    for pin in 0..IOAPIC_PINS {
        entries
            .u8(ENTRY_IO_INTERRUPT)
            .u8(INT_TYPE_INT)
            .u16(0) // conforming polarity and trigger
            .u8(0) // ISA bus
            .u8(pin)
            .u8(ioapic_id)
            .u8(pin);
        count += 1;
    }
    // LINT0 of the bootstrap CPU carries the legacy PIC (ExtINT); LINT1 of every CPU is NMI.
    entries
        .u8(ENTRY_LOCAL_INTERRUPT)
        .u8(INT_TYPE_EXTINT)
        .u16(0)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(0);
    entries
        .u8(ENTRY_LOCAL_INTERRUPT)
        .u8(INT_TYPE_NMI)
        .u16(0)
        .u8(0)
        .u8(0)
        .u8(0xff)
        .u8(1);
    count += 2;

    const FLOATING_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let table_addr = base + FLOATING_LEN as u64;
    let mut header = Table(Vec::with_capacity(HEADER_LEN));
    header
        .bytes(b"PCMP")
        .u16((HEADER_LEN + entries.0.len()) as u16)
        .u8(SPEC_REV)
        .u8(0) // checksum, patched below
        .bytes(b"KILN    ")
        .bytes(b"KILN-VMM    ")
        .u32(0)
        .u16(0)
        .u16(count)
        .u32(APIC_START as u32)
        .u16(0)
        .u8(0)
        .u8(0);
    let mut config = header.0;
    config.extend_from_slice(&entries.0);
    config[7] = checksum(&config);

    let mut floating = Table(Vec::with_capacity(FLOATING_LEN));
    floating
        .bytes(b"_MP_")
        .u32(table_addr as u32)
        .u8(1) // length in 16-byte units
        .u8(SPEC_REV)
        .u8(0) // checksum, patched below
        .bytes(&[0; 5]);
    let mut out = floating.0;
    out[10] = checksum(&out);
    out.extend_from_slice(&config);
    Ok(out)
}

/// Writes the MP tables for `num_cpus` vCPUs at the start of the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MpTableError> {
    let table = build(EBDA_START, num_cpus)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(|_| MpTableError::NoMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_pointers_are_consistent() {
        for cpus in [1u8, 2, MAX_CPUS] {
            let t = build(EBDA_START, cpus).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, EBDA_START + 16);
            let cfg = &t[16..];
            assert_eq!(&cfg[0..4], b"PCMP");
            let len = u16::from_le_bytes(cfg[4..6].try_into().unwrap()) as usize;
            assert_eq!(len, cfg.len());
            assert_eq!(sum(cfg), 0);
            let count = u16::from_le_bytes(cfg[34..36].try_into().unwrap());
            assert_eq!(count as usize, cpus as usize + 2 + IOAPIC_PINS as usize + 2);
            // Everything stays inside the 1 KiB window Linux scans.
            assert!(EBDA_START + t.len() as u64 <= 0xa0000);
        }
    }

    #[test]
    fn one_bootstrap_processor_and_distinct_apic_ids() {
        let t = build(EBDA_START, 4).unwrap();
        let procs: Vec<&[u8]> = t[16 + 44..].chunks(20).take(4).collect();
        for (i, p) in procs.iter().enumerate() {
            assert_eq!(p[0], ENTRY_PROCESSOR);
            assert_eq!(p[1], i as u8);
            assert_eq!(p[3] & CPU_BOOTSTRAP != 0, i == 0);
        }
    }

    #[test]
    fn cpu_count_limits() {
        assert!(build(EBDA_START, 0).is_err());
        assert!(build(EBDA_START, MAX_CPUS + 1).is_err());
    }
}
