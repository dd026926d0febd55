//! Per-vCPU CPUID: KVM's supported set with this vCPU's APIC ID and the VM's topology
//! (one socket, one thread per core, `vcpu_count` cores).

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `count` cores (the x2APIC ID shift of the core level).
fn core_shift(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// Rewrites `entries` for vCPU `apic_id` of `vcpu_count`.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], apic_id: u8, vcpu_count: u8) {
    let id = u32::from(apic_id);
    let count = u32::from(vcpu_count);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | ((count & 0xff) << 16);
                e.ecx |= ECX_HYPERVISOR;
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
            _ => {}
        }
    }
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
        normalize(&mut e, 3, 4);
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
        normalize(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
        assert_eq!(core_shift(1), 0);
        assert_eq!(core_shift(3), 2);
    }
}
