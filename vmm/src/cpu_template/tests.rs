//! Unit tests for CPU template parsing, application and selection.

use super::*;
use std::path::Path;

const SAMPLE: &str = r#"{
  "name": "sample",
  "kernel_cmdline": " foo=1 bar ",
  "cpuid_modifiers": [
    {"leaf": "0x1", "subleaf": "0x0", "flags": 0,
     "modifiers": [{"register": "ecx", "bitmap": "0bxxxxx0xxxxxxxxxxxxxxxxxxxxxxxxx1"}]}
  ],
  "msr_modifiers": [{"addr": "0x1a0", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"}]
}"#;

#[test]
fn bitmap_forces_only_the_given_bits() {
    let b = Bitmap::parse("0b10xx", 4).unwrap();
    assert_eq!((b.mask, b.bits), (0b1100, 0b1000));
    assert_eq!(b.apply(0b0111), 0b1011);
    assert!(Bitmap::parse("10xx", 4).is_err());
    assert!(Bitmap::parse("0b10x", 4).is_err());
    assert!(Bitmap::parse("0b10x2", 4).is_err());
}

#[test]
fn sample_template_parses_and_applies() {
    let t = CpuTemplate::from_json("sample.json", SAMPLE).unwrap();
    assert_eq!(t.kernel_cmdline, "foo=1 bar");
    let mut entries = vec![kvm_cpuid_entry2 {
        function: 1,
        index: 0,
        ecx: 0xffff_fff0,
        ..Default::default()
    }];
    t.apply_cpuid(&mut entries);
    // Bit 26 forced to 0, bit 0 forced to 1, the rest kept.
    assert_eq!(entries[0].ecx, 0xfbff_fff1);

    let mut msrs = vec![kvm_msr_entry {
        index: 0x1a0,
        data: 0x3,
        ..Default::default()
    }];
    t.apply_msrs(&mut msrs, |_| unreachable!());
    assert_eq!(msrs[0].data, 0x2);
}

#[test]
fn bitmap_of_the_wrong_width_names_the_template() {
    let too_long = format!("0b{}", "x".repeat(33));
    let json = format!(
        r#"{{"cpuid_modifiers": [{{"leaf": "0x1", "modifiers": [{{"register": "eax", "bitmap": "{too_long}"}}]}}]}}"#
    );
    let err = CpuTemplate::from_json("sample.json", &json)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sample.json") && err.contains("expected 32"),
        "{err}"
    );
}

#[test]
fn msr_not_in_boot_list_is_read_then_modified() {
    let json = r#"{"msr_modifiers": [{"addr": "0x10", "bitmap": "0b1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}"#;
    let t = CpuTemplate::from_json("t", json).unwrap();
    let mut msrs = Vec::new();
    t.apply_msrs(&mut msrs, |i| {
        assert_eq!(i, 0x10);
        5
    });
    assert_eq!(msrs[0].data, (1 << 63) | 5);
}

#[test]
fn bad_templates_are_rejected_clearly() {
    for (json, needle) in [
        (r#"{"bogus": 1}"#, "unknown field"),
        (
            r#"{"cpuid_modifiers": [{"leaf": "zz", "modifiers": []}]}"#,
            "leaf",
        ),
        (
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "modifiers": [{"register": "esi", "bitmap": "0b"}]}]}"#,
            "register",
        ),
        (
            r#"{"host_match": {"kernel_module": "../etc"}}"#,
            "module name",
        ),
        (r#"{"kernel_cmdline": "a\nb"}"#, "single line"),
        ("not json", "expected"),
    ] {
        let err = CpuTemplate::from_json("t.json", json)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{json}: {err}");
    }
}

#[test]
fn builtin_templates_are_valid() {
    let all = builtin_templates().unwrap();
    let pvm = all.iter().find(|t| t.name == "pvm-host").unwrap();
    assert!(pvm.kernel_cmdline.contains("pvm_syscall_fixup"));
    // Guest user space sees the host's AVX through native CPUID; without XSAVE it must not use it.
    assert!(pvm
        .kernel_cmdline
        .contains("GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F"));
    assert_eq!(
        pvm.host_match.as_ref().unwrap().kernel_module.as_deref(),
        Some("kvm_pvm")
    );
}

#[test]
fn auto_selects_by_loaded_module() {
    let dir = std::env::temp_dir().join(format!("kiln-sysmod-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(TemplateChoice::Auto.resolve(&dir).unwrap(), None);
    std::fs::create_dir_all(dir.join("kvm_pvm")).unwrap();
    let t = TemplateChoice::Auto.resolve(&dir).unwrap().unwrap();
    assert_eq!(t.name, "pvm-host");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn choices_parse() {
    let p = |s: &str| s.parse::<TemplateChoice>().unwrap();
    assert_eq!(p("auto"), TemplateChoice::Auto);
    assert_eq!(p("none"), TemplateChoice::None);
    assert_eq!(p("pvm-host"), TemplateChoice::Builtin("pvm-host".into()));
    assert_eq!(p("./t.json"), TemplateChoice::File("./t.json".into()));
    assert!(p("nope").resolve(Path::new("/nonexistent")).is_err());
    assert!(p("/nonexistent/t.json")
        .resolve(Path::new("/"))
        .unwrap_err()
        .to_string()
        .contains("cannot open CPU template /nonexistent/t.json"));
}

/// Review defect (issue 14): `/dev/zero` as a template was read until the OOM killer came.
#[test]
fn a_template_path_naming_a_device_or_a_huge_file_is_refused() {
    let zero = TemplateChoice::File("/dev/zero".into()).resolve(Path::new("/nonexistent"));
    let err = zero.unwrap_err().to_string();
    assert!(err.contains("is a character device"), "{err}");
    let big = std::env::temp_dir().join(format!("kiln-template-big-{}.json", std::process::id()));
    std::fs::write(&big, vec![b' '; (1 << 20) + 1]).unwrap();
    let err = TemplateChoice::File(big.clone())
        .resolve(Path::new("/nonexistent"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("larger than 1048576 bytes"), "{err}");
    std::fs::remove_file(big).unwrap();
}
