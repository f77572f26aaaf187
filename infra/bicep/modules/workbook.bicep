// An Azure Monitor workbook over the gateway's Application Insights: one panel per query in docs/queries/*.kql
// (loaded at build time, so the workbook and the documented queries are the same text). Chargeback, tokens per
// minute, throttling and breakers, latency, async outcomes and batch throughput; tests/infra/test_workbook.py
// checks that every query file is a panel, and tests/unit/test_kql_contract.py that the queries read only what
// the gateway emits.

@description('Display name of the workbook in the portal.')
param displayName string = 'AI gateway: usage, throttling and latency'

@description('Azure region (the workbook resource only; the data stays in Application Insights).')
param location string

@description('Tags applied to the workbook.')
param tags object = {}

@description('Resource id of the Application Insights component the queries run against.')
param applicationInsightsId string

var panels = [
  {
    title: 'Chargeback: tokens per caller and model per day'
    query: loadTextContent('../../../docs/queries/chargeback.kql')
    visualization: 'table'
  }
  {
    title: 'Tokens and requests per minute per caller against their limits'
    query: loadTextContent('../../../docs/queries/tokens-per-minute.kql')
    visualization: 'table'
  }
  {
    title: 'Throttling and breaker trips per backend'
    query: loadTextContent('../../../docs/queries/throttling.kql')
    visualization: 'table'
  }
  {
    title: 'Latency percentiles and time to first chunk per backend and deployment'
    query: loadTextContent('../../../docs/queries/latency.kql')
    visualization: 'table'
  }
  {
    title: 'Async requests: outcomes and durations'
    query: loadTextContent('../../../docs/queries/async-outcomes.kql')
    visualization: 'table'
  }
  {
    title: 'Batch throughput per caller and model'
    query: loadTextContent('../../../docs/queries/batch-throughput.kql')
    visualization: 'table'
  }
]

var content = {
  version: 'Notebook/1.0'
  items: concat([
    {
      type: 1
      name: 'intro'
      content: {
        json: '## AI gateway\nUsage comes from metrics (never sampled); latency percentiles from request spans (sampled). The queries are docs/queries/*.kql in the gateway repository.'
      }
    }
  ], map(panels, p => {
    type: 3
    name: p.title
    content: {
      version: 'KqlItem/1.0'
      query: p.query
      size: 0
      title: p.title
      queryType: 0
      resourceType: 'microsoft.insights/components'
      visualization: p.visualization
    }
  }))
  fallbackResourceIds: [
    applicationInsightsId
  ]
}

// Workbook names are GUIDs; this one is stable per component, so re-deploys update it in place.
resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(applicationInsightsId, 'ai-gateway-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: applicationInsightsId
    serializedData: string(content)
    version: '1.0'
  }
}

@description('Resource id of the workbook (open it from the Application Insights resource, Workbooks).')
output id string = workbook.id
