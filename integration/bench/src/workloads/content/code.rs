//! Machine code: x86-64-like functions built from real instruction
//! templates and idioms, operands drawn per use.

use super::super::rng::Rng;
use super::Cursor;

/// Instruction templates as in compiled x86-64 code; `0xAA` bytes are
/// operands (displacements, immediates, call targets) drawn per use.
const INSTRUCTIONS: &[&[u8]] = &[
    &[0x48, 0x8b, 0x47, 0xAA],                         // mov rax, [rdi+d8]
    &[0x48, 0x8b, 0x43, 0xAA],                         // mov rax, [rbx+d8]
    &[0x8b, 0x46, 0xAA],                               // mov eax, [rsi+d8]
    &[0x48, 0x89, 0x43, 0xAA],                         // mov [rbx+d8], rax
    &[0x48, 0x89, 0xdf],                               // mov rdi, rbx
    &[0x48, 0x89, 0xc7],                               // mov rdi, rax
    &[0x4c, 0x89, 0xe6],                               // mov rsi, r12
    &[0x48, 0x85, 0xc0],                               // test rax, rax
    &[0x85, 0xc0],                                     // test eax, eax
    &[0x48, 0x39, 0xc3],                               // cmp rbx, rax
    &[0x83, 0xf8, 0xAA],                               // cmp eax, imm8
    &[0x74, 0xAA],                                     // je rel8
    &[0x75, 0xAA],                                     // jne rel8
    &[0x0f, 0x84, 0xAA, 0xAA, 0x00, 0x00],             // je rel32
    &[0xe8, 0xAA, 0xAA, 0xAA, 0xff],                   // call rel32 (backwards)
    &[0xe8, 0xAA, 0xAA, 0x0A, 0x00],                   // call rel32 (forwards)
    &[0x48, 0x8d, 0x05, 0xAA, 0xAA, 0xAA, 0x00],       // lea rax, [rip+d32]
    &[0x31, 0xc0],                                     // xor eax, eax
    &[0xb8, 0xAA, 0x00, 0x00, 0x00],                   // mov eax, imm32
    &[0x48, 0x83, 0xc4, 0xAA],                         // add rsp, imm8
    &[0x41, 0x89, 0xc4],                               // mov r12d, eax
    &[0x48, 0x8b, 0x05, 0xAA, 0xAA, 0xAA, 0x00],       // mov rax, [rip+d32]
    &[0xeb, 0xAA],                                     // jmp rel8
    &[0x0f, 0xb6, 0x47, 0xAA],                         // movzx eax, byte [rdi+d8]
    &[0x48, 0xc7, 0x43, 0xAA, 0x00, 0x00, 0x00, 0x00], // mov qword [rbx+d8], 0
];
/// Common multi-instruction sequences (argument set-up and call, error
/// checks, loads of a field of a field).
const IDIOMS: &[&[u8]] = &[
    &[
        0x48, 0x89, 0xdf, 0xe8, 0x10, 0xfe, 0xff, 0xff, 0x48, 0x85, 0xc0, 0x74, 0x18,
    ],
    &[0x85, 0xc0, 0x0f, 0x88, 0x40, 0x01, 0x00, 0x00],
    &[0x48, 0x8b, 0x43, 0x08, 0x48, 0x8b, 0x40, 0x10],
    &[0x31, 0xc0, 0x5b, 0x5d, 0xc3],
    &[0x48, 0x8b, 0x7d, 0xe8, 0x48, 0x8b, 0x75, 0xf0],
    &[0xb8, 0xf4, 0xff, 0xff, 0xff, 0xeb, 0x0a],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x4c, 0x89, 0xe7, 0xe8, 0x00, 0x00, 0x00, 0x00],
];
const PROLOGUE: &[u8] = &[0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x41, 0x56, 0x53];
const EPILOGUE: &[u8] = &[0x5b, 0x41, 0x5e, 0x41, 0x5f, 0x5d, 0xc3];

pub(super) fn fill_code(page: &mut [u8], rng: &mut Rng) {
    let mut c = Cursor::new(page);
    let mut buf = [0u8; 8];
    while !c.full() {
        c.put(PROLOGUE);
        let body = rng.lognormal(30.0, 0.7) as usize;
        for _ in 0..body {
            if rng.chance(0.25) {
                // Compilers emit the same idioms over and over.
                c.put(IDIOMS[rng.index(IDIOMS.len()).min(rng.index(IDIOMS.len()))]);
                continue;
            }
            // Hot instruction forms dominate compiled code.
            let i = if rng.chance(0.5) {
                rng.index(8)
            } else {
                rng.index(INSTRUCTIONS.len())
            };
            let template = INSTRUCTIONS[i];
            buf[..template.len()].copy_from_slice(template);
            for b in &mut buf[..template.len()] {
                if *b == 0xAA {
                    // Field offsets and small constants are multiples of 8.
                    *b = if rng.chance(0.75) {
                        (rng.below(16) * 8) as u8
                    } else {
                        rng.u64() as u8
                    };
                }
            }
            c.put(&buf[..template.len()]);
        }
        c.put(EPILOGUE);
        // Functions are 16-byte aligned with int3 or multi-byte nop padding.
        let pad = if rng.chance(0.5) { 0xcc } else { 0x90 };
        while c.at & 15 != 0 && !c.full() {
            c.put(&[pad]);
        }
    }
}
