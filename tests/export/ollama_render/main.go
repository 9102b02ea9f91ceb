// Renders an Ollama Modelfile TEMPLATE the way Ollama does: Go's text/template over the
// system prompt and the collated messages (consecutive messages of one role joined by a
// blank line, every system message also joined into .System), as in Ollama's
// template/template.go. Reads {"template", "messages"} as JSON on stdin.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	var system []string
	var collated []*Message
	for i := range in.Messages {
		msg := in.Messages[i]
		if msg.Role == "system" {
			system = append(system, msg.Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msg.Role {
			collated[len(collated)-1].Content += "\n\n" + msg.Content
		} else {
			collated = append(collated, &msg)
		}
	}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(in.Template))
	data := map[string]any{"System": strings.Join(system, "\n\n"), "Messages": collated}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		panic(err)
	}
}
