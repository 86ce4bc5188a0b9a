// Records that can train: those whose first window (max_seq_len tokens)
// holds at least one target token. A population of users, each with a few
// records, must not get a user with nothing to train (worker/executor.h).
#ifndef FEDPEFT_DATA_RECORD_FILTER_H_
#define FEDPEFT_DATA_RECORD_FILTER_H_

#include <cstddef>
#include <vector>

#include "data/dataset.h"

namespace fedpeft {
namespace data {

// The records of `records` that make at least one training example on
// their own (as packing "truncate" would cut them); *dropped gets how many
// did not (e.g. a prompt longer than max_seq_len).
std::vector<Record> RecordsWithExamples(std::vector<Record> records,
                                        const model::Tokenizer& tokenizer,
                                        const DataOptions& options,
                                        size_t* dropped);

}  // namespace data
}  // namespace fedpeft

#endif  // FEDPEFT_DATA_RECORD_FILTER_H_
