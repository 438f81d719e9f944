"""radio.quantize over several processes (torch.distributed): the same answer at any scale.

    torchrun --nproc_per_node 2 examples/quantize_distributed.py            # gloo, CPU
    torchrun --nproc_per_node 4 examples/quantize_distributed.py --out DIR  # saved once, rank 0

A tiny random Llama keeps it offline and quick; pass your own model the same way. Every rank
backpropagates its share of each round's calibration micro-batches, the statistics are summed
with all_reduce, rank 0 solves the bit allocation and every rank ends with rank 0's model
(python/radio/distributed.py). Fix ``micro_batch`` so that 1, 2 or 4 processes agree.
"""
import argparse

import torch
import torch.distributed as dist
import transformers

import radio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=float, default=4.0)
    p.add_argument("--out", default=None, help="save the quantized model here (rank 0)")
    args = p.parse_args()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same model on every rank
    cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                   max_position_embeddings=256)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    calib = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(1))
    config = radio.QuantConfig.cpu(rounds=3, sequences_per_round=4, seq_len=64,
                                   tokens_per_sequence=5, rows_per_group=32, pca_components=16,
                                   micro_batch=1, progress=False)
    radio.quantize(model, bits=args.bits, calib=calib, config=config, verbose=rank == 0)
    if rank == 0:
        rep = model.radio_report
        print(f"{dist.get_world_size()} processes: {rep.bits_per_weight:.4f} bpw, "
              f"predicted distortion {rep.predicted_distortion:.6g}")
        if args.out:
            radio.save(model, args.out)
            print(f"saved {args.out}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
