package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/policies"
)

func newPolicyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Author and check Rego policies"}
	var data string
	test := &cobra.Command{
		Use:   "test DIR",
		Short: "Run the policy's Rego tests (*_test.rego)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := policies.Test(cmd.Context(), args[0]); err != nil {
				return err
			}
			e, err := policies.LoadDir(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "PASS: every Rego test in %s; policy revision %s; decisions %s\n", args[0], e.Revision(), e.Mode())
			return nil
		},
	}
	eval := &cobra.Command{
		Use:   "eval DIR --input FILE",
		Short: "Print the decision for an input document (the policy contract's input)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := readInput(cmd)
			if err != nil {
				return err
			}
			d, err := policies.Eval(cmd.Context(), args[0], in, policies.Query, dataOpt(data)...)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), d)
		},
	}
	explain := &cobra.Command{
		Use:   "explain DIR --input FILE",
		Short: "Show why the policy decides as it does: the decision and the rules behind it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := readInput(cmd)
			if err != nil {
				return err
			}
			ex, err := policies.Explain(cmd.Context(), args[0], in, dataOpt(data)...)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			for _, k := range policies.ExplainOrder(ex) {
				b, _ := json.Marshal(ex[k])
				fmt.Fprintf(w, "%-20s %s\n", k, b)
			}
			return nil
		},
	}
	for _, c := range []*cobra.Command{eval, explain} {
		c.Flags().String("input", "-", "input document (JSON file, - for stdin)")
		c.Flags().StringVar(&data, "data", "", "data file to use instead of DIR/data.json")
	}
	cmd.AddCommand(test, eval, explain)
	return cmd
}

func dataOpt(path string) []policies.Option {
	if path == "" {
		return nil
	}
	return []policies.Option{policies.WithDataFile(path)}
}

// readInput reads the --input document into ca.PolicyInput, the type the server decides on,
// so the policy is shown here what the server would show it: keys the type does not have
// (such as keyType for key_type) are refused, not passed on for a rule to miss.
func readInput(cmd *cobra.Command) (ca.PolicyInput, error) {
	path, _ := cmd.Flags().GetString("input")
	var r io.Reader = cmd.InOrStdin()
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return ca.PolicyInput{}, err
		}
		defer f.Close()
		r = f
	}
	var in ca.PolicyInput
	dec := json.NewDecoder(r)
	dec.UseNumber()
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return ca.PolicyInput{}, fmt.Errorf("--input: not a policy input document (policies/README.md, \"The input document\"): %w", err)
	}
	return in, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
