//! Per-vCPU CPUID: KVM's supported set with this vCPU's APIC ID and the VM's topology
//! (one socket, one thread per core, `vcpu_count` cores), the host's brand string, the
//! TSC-deadline timer when KVM has it, and no KVM hints Kiln cannot honour.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_BRAND_FIRST: u32 = 0x8000_0002;
const LEAF_BRAND_LAST: u32 = 0x8000_0004;

/// Host facts that shape the guest's CPUID.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCpuid {
    /// KVM can emulate the LAPIC TSC-deadline timer (it is not in KVM's supported CPUID).
    pub tsc_deadline: bool,
    /// The host's processor brand string (CPUID 0x80000002..4): 12 registers, 48 bytes.
    pub brand: Option<[u32; 12]>,
}

impl HostCpuid {
    /// Reads the brand string with the CPUID instruction.
    pub fn detect(tsc_deadline: bool) -> HostCpuid {
        let max_ext = std::arch::x86_64::__cpuid(0x8000_0000).eax;
        let brand = (max_ext >= LEAF_BRAND_LAST).then(|| {
            let mut regs = [0u32; 12];
            for (i, leaf) in (LEAF_BRAND_FIRST..=LEAF_BRAND_LAST).enumerate() {
                let r = std::arch::x86_64::__cpuid(leaf);
                regs[i * 4..i * 4 + 4].copy_from_slice(&[r.eax, r.ebx, r.ecx, r.edx]);
            }
            regs
        });
        HostCpuid {
            tsc_deadline,
            brand,
        }
    }
}

/// Bits needed to number `count` cores (the x2APIC ID shift of the core level).
fn core_shift(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// Rewrites `entries` for vCPU `apic_id` of `vcpu_count`.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], apic_id: u8, vcpu_count: u8, host: &HostCpuid) {
    let id = u32::from(apic_id);
    let count = u32::from(vcpu_count);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | ((count & 0xff) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if host.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if vcpu_count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package minus one; EAX[25:14]: sharing threads minus one.
                e.eax &= 0x0000_3fff;
                e.eax |= ((count - 1) & 0x3f) << 26;
                let cache_level = (e.eax >> 5) & 0x7;
                if cache_level >= 3 {
                    e.eax |= ((count - 1) & 0xfff) << 14;
                }
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_shift(vcpu_count);
                        e.ebx = count;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            // Hints (EDX) promise dedicated physical CPUs; Kiln does not pin vCPUs.
            LEAF_KVM_FEATURES => e.edx = 0,
            LEAF_BRAND_FIRST..=LEAF_BRAND_LAST => {
                if let Some(brand) = host.brand {
                    let i = (e.function - LEAF_BRAND_FIRST) as usize * 4;
                    [e.eax, e.ebx, e.ecx, e.edx] =
                        [brand[i], brand[i + 1], brand[i + 2], brand[i + 3]];
                }
            }
            _ => {}
        }
    }
}

/// Whether the CPUID vendor is AMD (leaf 0: "AuthenticAMD").
pub fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| [e.ebx, e.edx, e.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xdead_beef,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_topology() {
        let mut e = vec![leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)];
        normalize(&mut e, 3, 4, &HostCpuid::default());
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0xbeef);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert!(e[1..].iter().all(|l| l.edx == 3));
        assert_eq!((e[2].eax, e[2].ebx), (2, 4));
        assert_eq!(e[3].ecx >> 8, 0, "level 2 is invalid");
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = vec![leaf(1, 0)];
        e[0].edx = EDX_HTT;
        normalize(&mut e, 0, 1, &HostCpuid::default());
        assert_eq!(e[0].edx & EDX_HTT, 0);
        assert_eq!(core_shift(1), 0);
        assert_eq!(core_shift(3), 2);
    }

    #[test]
    fn tsc_deadline_brand_and_hints() {
        let mut e = vec![
            leaf(1, 0),
            leaf(LEAF_KVM_FEATURES, 0),
            leaf(LEAF_BRAND_FIRST, 0),
        ];
        e[1].edx = 1; // KVM_HINTS_REALTIME
        let mut brand = [0u32; 12];
        brand[0] = u32::from_le_bytes(*b"Kiln");
        let host = HostCpuid {
            tsc_deadline: true,
            brand: Some(brand),
        };
        normalize(&mut e, 0, 1, &host);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(e[1].edx, 0);
        assert_eq!(e[2].eax.to_le_bytes(), *b"Kiln");
        assert!(!is_amd(&e));
        let amd = kvm_cpuid_entry2 {
            function: 0,
            ebx: 0x6874_7541,
            edx: 0x6974_6e65,
            ecx: 0x444d_4163,
            ..Default::default()
        };
        assert!(is_amd(&[amd]));
    }
}
